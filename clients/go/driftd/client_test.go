package driftd_test

// Tests against a live driftd. With DRIFTD_TARGET set they use that server;
// otherwise TestMain starts `driftd serve` from the repository's .venv on a
// free loopback port with a fresh embedded Chroma directory (make test or
// make clients-test creates the .venv).

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/driftd/driftd/clients/go/driftd"
	"github.com/driftd/driftd/clients/go/driftdv1"
)

const dim = 8

var (
	target string
	srv    *server // nil when DRIFTD_TARGET names an outside server
	t0     = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
)

// server is a `driftd serve` process this test owns: env adds settings,
// creds are the health check's transport (nil: plaintext).
type server struct {
	exe, addr, data, log string
	env                  []string
	creds                credentials.TransportCredentials
	cmd                  *exec.Cmd
	exitedCh             chan error
}

func (s *server) start() error {
	logf, err := os.OpenFile(s.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	s.cmd = exec.Command(s.exe, "serve")
	s.cmd.Env = append(os.Environ(),
		"DRIFTD_ADDRESS="+s.addr, "DRIFTD_METRICS_PORT=0",
		"DRIFTD_CHROMA_PATH="+s.data, "DRIFTD_WORKERS=2", "DRIFTD_GRACE_SECONDS=2")
	s.cmd.Env = append(s.cmd.Env, s.env...)
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	if err := s.cmd.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- s.cmd.Wait(); logf.Close() }()
	creds := s.creds
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	conn, err := grpc.NewClient(s.addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return err
	}
	defer conn.Close()
	deadline := time.Now().Add(120 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			log, _ := os.ReadFile(s.log)
			return fmt.Errorf("driftd exited (%v):\n%s", err, log)
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			s.exitedCh = exited
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return errors.New("driftd not SERVING after 120 s")
}

func (s *server) stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exitedCh:
	case <-time.After(60 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exitedCh
	}
	s.cmd = nil
}

func findDriftd() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		exe := filepath.Join(dir, ".venv", "bin", "driftd")
		if _, err := os.Stat(exe); err == nil {
			return exe, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no .venv/bin/driftd above the working directory: run `make test` first or set DRIFTD_TARGET")
		}
		dir = parent
	}
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	target = os.Getenv("DRIFTD_TARGET")
	if target == "" {
		exe, err := findDriftd()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		tmp, err := os.MkdirTemp("", "driftd-go-test-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(tmp)
		addr, err := freeAddr()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		srv = &server{exe: exe, addr: addr, data: filepath.Join(tmp, "chroma"), log: filepath.Join(tmp, "driftd.log")}
		if err := srv.start(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer srv.stop()
		target = addr
	}
	return m.Run()
}

func client(t *testing.T, opts ...driftd.Option) *driftd.Client {
	t.Helper()
	c, err := driftd.New(target, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func newCollection(t *testing.T, c *driftd.Client) string {
	t.Helper()
	id := fmt.Sprintf("go-%s-%d", t.Name()[4:min(len(t.Name()), 24)], rand.IntN(1_000_000))
	col, err := c.CreateCollection(context.Background(), id,
		&driftdv1.Collection{Dimension: dim, Distance: driftdv1.Distance_DISTANCE_L2})
	if err != nil {
		t.Fatal(err)
	}
	if col.GetName() != driftd.CollectionName(id) {
		t.Fatalf("created %q, want %q", col.GetName(), driftd.CollectionName(id))
	}
	t.Cleanup(func() { _ = c.DeleteCollection(context.Background(), id) })
	return id
}

// relaxing is a timeline moving towards target: x <- x + 0.15 (target - x).
func relaxing(series string, target []float32, n int, seed uint64) []*driftdv1.Point {
	rng := rand.New(rand.NewPCG(seed, 1))
	x := make([]float32, dim)
	for i := range x {
		x[i] = float32(rng.NormFloat64() * 2)
	}
	pts := make([]*driftdv1.Point, n)
	for i := range pts {
		v := make([]float32, dim)
		for j := range x {
			x[j] += 0.15*(target[j]-x[j]) + float32(rng.NormFloat64()*0.01)
			v[j] = x[j]
		}
		pts[i] = driftd.NewPoint(fmt.Sprintf("%s-%03d", series, i), series, t0.Add(time.Duration(i)*time.Minute), v)
	}
	return pts
}

func TestCreateStreamUpsertProbeSimulate(t *testing.T) {
	ctx := context.Background()
	c := client(t)
	id := newCollection(t, c)
	target := make([]float32, dim)
	target[0] = 3

	// Stream-upsert three timelines in four batches; each is acked in order.
	var all []*driftdv1.Point
	for s := range 3 {
		all = append(all, relaxing(fmt.Sprintf("s%d", s), target, 30, uint64(s))...)
	}
	w := c.NewWriter(id)
	for i, n := 0, 0; i < len(all); i, n = i+25, n+1 {
		ack, err := w.Write(ctx, all[i:min(i+25, len(all))]...)
		if err != nil {
			t.Fatal(err)
		}
		if ack.GetSequence() != int64(n+1) || ack.GetRejectedCount() != 0 {
			t.Fatalf("ack %d: %v", n+1, ack)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if w.LastAcked() != 4 {
		t.Fatalf("last acked %d, want 4", w.LastAcked())
	}
	col, err := c.GetCollection(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if col.GetPointCount() != int64(len(all)) || col.GetSeriesCount() != 3 {
		t.Fatalf("collection %v", col)
	}

	// The trajectory comes back in time order.
	var times []time.Time
	for p, err := range c.Trajectory(ctx, &driftdv1.GetTrajectoryRequest{Parent: id, ChunkSize: 7}) {
		if err != nil {
			t.Fatal(err)
		}
		times = append(times, p.GetTime().AsTime())
	}
	if len(times) != len(all) || !slices.IsSortedFunc(times, time.Time.Compare) {
		t.Fatalf("trajectory: %d points, sorted %v", len(times), slices.IsSortedFunc(times, time.Time.Compare))
	}

	// The flow at the origin points towards the target.
	probe, err := c.Probe(ctx, id, driftd.AtVector(make([]float32, dim)))
	if err != nil {
		t.Fatal(err)
	}
	v := probe.GetVelocity()
	if len(v) != dim || v[0] <= 0 || float64(v[0])/norm(v) < 0.8 {
		t.Fatalf("velocity %v does not point to +x0", v)
	}
	if probe.GetSpeed() <= 0 || probe.GetNearestPointId() == "" {
		t.Fatalf("probe %v", probe)
	}

	// A simulation from a stored point streams steps 0..n and ends with a reason.
	var steps []*driftdv1.SimulatePathsResponse
	for step, err := range c.Simulate(ctx, &driftdv1.SimulatePathsRequest{
		Parent: id, Start: driftd.AtPoint("s1-002"), Steps: 10, IncludeVectors: true,
	}) {
		if err != nil {
			t.Fatal(err)
		}
		steps = append(steps, step)
	}
	if len(steps) < 2 || len(steps) > 11 {
		t.Fatalf("%d steps", len(steps))
	}
	for i, s := range steps {
		if int(s.GetStep()) != i || len(s.GetPosition()) != dim {
			t.Fatalf("step %d: %v", i, s)
		}
	}
	if steps[0].GetNearestPointId() != "s1-002" || steps[len(steps)-1].GetStopReason() == "" {
		t.Fatalf("first %v last %v", steps[0], steps[len(steps)-1])
	}
	if dist(steps[len(steps)-1].GetPosition(), target) >= dist(steps[0].GetPosition(), target) {
		t.Fatal("the simulated path does not approach the attractor")
	}

	// Breaking out of the loop early cancels the stream.
	n := 0
	for _, err := range c.Simulate(ctx, &driftdv1.SimulatePathsRequest{Parent: id, Start: driftd.AtPoint("s0-000"), Steps: 1000}) {
		if err != nil {
			t.Fatal(err)
		}
		if n++; n == 3 {
			break
		}
	}

	// The collection is listed.
	found := false
	for col, err := range c.ListCollections(ctx) {
		if err != nil {
			t.Fatal(err)
		}
		found = found || col.GetName() == driftd.CollectionName(id)
	}
	if !found {
		t.Fatalf("%s not listed", id)
	}
}

func TestRichErrors(t *testing.T) {
	ctx := context.Background()
	c := client(t)
	id := newCollection(t, c)

	_, err := c.Upsert(ctx, id, driftd.NewPoint("bad", "", t0, []float32{1, 2, 3}))
	if driftd.Code(err) != codes.InvalidArgument {
		t.Fatalf("short vector: %v", err)
	}
	if reason, _ := driftd.Reason(err); reason != "DIMENSION_MISMATCH" {
		t.Fatalf("reason %q", reason)
	}
	if f := driftd.FieldViolations(err); !slices.Contains(f, "points[0].vector") {
		t.Fatalf("field violations %v", f)
	}

	_, err = c.GetCollection(ctx, "go-does-not-exist")
	if reason, _ := driftd.Reason(err); driftd.Code(err) != codes.NotFound || reason != "COLLECTION_NOT_FOUND" {
		t.Fatalf("missing collection: %v", err)
	}

	if _, err := c.Upsert(ctx, id, relaxing("few", make([]float32, dim), 3, 9)...); err != nil {
		t.Fatal(err)
	}
	_, err = c.Probe(ctx, id, driftd.AtPoint("few-000"))
	reason, md := driftd.Reason(err)
	if driftd.Code(err) != codes.FailedPrecondition || reason != "NOT_ENOUGH_POINTS" || md["required"] == "" {
		t.Fatalf("too few points: %v %q %v", err, reason, md)
	}
}

func TestDefaultDeadline(t *testing.T) {
	c := client(t, driftd.WithTimeout(time.Microsecond), driftd.WithMaxAttempts(1))
	_, err := c.GetCollection(context.Background(), "go-deadline")
	if driftd.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("want DEADLINE_EXCEEDED from the default deadline, got %v", err)
	}
	// A caller's own deadline wins over the default.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.GetCollection(ctx, "go-deadline"); driftd.Code(err) != codes.NotFound {
		t.Fatalf("with the caller's deadline: %v", err)
	}
}

// The writer survives a server restart: the next Write gets UNAVAILABLE,
// reconnects with backoff and re-sends; the stream resumes after the last ack.
func TestWriterResumesAcrossRestart(t *testing.T) {
	if srv == nil {
		t.Skip("needs a server this test started (DRIFTD_TARGET is set)")
	}
	ctx := context.Background()
	c := client(t, driftd.WithMaxAttempts(8))
	id := newCollection(t, c)
	pts := relaxing("r", make([]float32, dim), 20, 4)
	w := c.NewWriter(id)
	if _, err := w.Write(ctx, pts[:10]...); err != nil {
		t.Fatal(err)
	}
	srv.stop()
	restarted := make(chan error, 1)
	go func() { time.Sleep(500 * time.Millisecond); restarted <- srv.start() }()
	ack, err := w.Write(ctx, pts[10:]...)
	if err := <-restarted; err != nil {
		t.Fatal(err)
	}
	if err != nil {
		t.Fatalf("write across the restart: %v", err)
	}
	if ack.GetSequence() != 2 || ack.GetAcceptedCount() != 10 || w.LastAcked() != 2 {
		t.Fatalf("ack %v, last acked %d", ack, w.LastAcked())
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	col, err := c.GetCollection(ctx, id)
	if err != nil || col.GetPointCount() != 20 {
		t.Fatalf("after the restart: %v %v", col, err)
	}
}

func norm(v []float32) float64 {
	s := 0.0
	for _, x := range v {
		s += float64(x) * float64(x)
	}
	return math.Sqrt(s)
}

func dist(a, b []float32) float64 {
	d := make([]float32, len(a))
	for i := range a {
		d[i] = a[i] - b[i]
	}
	return norm(d)
}
