// Package driftd is a small Go client for driftd, the flow-native vector
// database, over gRPC.
//
// The generated stubs (package driftdv1) carry the whole API; this package
// wraps them with what every caller needs: a connection with sensible
// defaults (a deadline on unary calls, retries with backoff on UNAVAILABLE
// for the methods safe to repeat, keepalive, message limits), Go 1.23
// iterators over the server streams, a batching stream writer that resumes
// after the last acknowledged batch, and access to driftd's rich errors.
//
//	c, err := driftd.New("127.0.0.1:50051")
//	// or, to a server with API keys and TLS:
//	c, err := driftd.New("driftd.example:50051", driftd.WithAPIKey(key),
//		driftd.WithTLS(driftd.TLS{CAFile: "ca.crt"}))
//	...
//	defer c.Close()
//	_, err = c.CreateCollection(ctx, "notes", &driftdv1.Collection{Dimension: 8})
//	ack, err := c.NewWriter("notes").Write(ctx, points...)
//	probe, err := c.Probe(ctx, "notes", driftd.AtPoint("n3"))
//	for step, err := range c.Simulate(ctx, &driftdv1.SimulatePathsRequest{...}) { ... }
//
// Every method also exists on the raw stubs: Client.Collections, Client.Points
// and Client.Flow.
package driftd

import (
	"context"
	"encoding/json"
	"fmt"
	"iter"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/driftd/driftd/clients/go/driftdv1"
)

// Defaults of New.
const (
	DefaultTimeout     = 30 * time.Second
	DefaultMaxAttempts = 4
	DefaultMaxMessage  = 64 << 20 // the server's default limit
)

// Client is a connection to one driftd server (or a load-balanced set of
// replicas). It is safe for concurrent use.
type Client struct {
	conn    *grpc.ClientConn
	timeout time.Duration

	// The generated stubs, for anything the helpers below do not cover.
	Collections driftdv1.CollectionServiceClient
	Points      driftdv1.PointServiceClient
	Flow        driftdv1.FlowServiceClient
}

type options struct {
	timeout     time.Duration
	maxAttempts int
	creds       credentials.TransportCredentials
	tls         *TLS
	apiKey      string
	dial        []grpc.DialOption
}

// Option configures New.
type Option func(*options)

// WithTimeout sets the deadline given to unary calls whose context has none
// (default 30 s; 0 disables). Streams get no default deadline.
func WithTimeout(d time.Duration) Option { return func(o *options) { o.timeout = d } }

// WithMaxAttempts sets how many times a call that fails with UNAVAILABLE
// before any response is tried in all, with exponential backoff (0.1 s to
// 2 s); 1 disables retries. Default 4 (gRPC caps it at 5). Only the methods
// the proto marks safe to repeat are retried (see RetryableMethods);
// StreamUpsertPoints is never retried by the transport: the Writer resumes it.
func WithMaxAttempts(n int) Option { return func(o *options) { o.maxAttempts = n } }

// WithTransportCredentials sets the transport credentials directly (default:
// plaintext); WithTLS covers driftd's TLS and mutual TLS.
func WithTransportCredentials(c credentials.TransportCredentials) Option {
	return func(o *options) { o.creds = c }
}

// WithDialOptions appends raw gRPC dial options.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(o *options) { o.dial = append(o.dial, opts...) }
}

// retriedByTransport reports whether the transport may send m again after
// UNAVAILABLE: the proto marks its idempotency_level NO_SIDE_EFFECTS or
// IDEMPOTENT (each RPC's decision and its reason are in proto/driftd/v1), and
// the client sends one request message. Calls that stream requests are never
// re-sent by the transport: the Writer resumes StreamUpsertPoints after the
// last acknowledged batch itself, and ImportCollection is not idempotent.
func retriedByTransport(m protoreflect.MethodDescriptor) bool {
	opts, _ := m.Options().(*descriptorpb.MethodOptions) // nil when the RPC has none
	return opts.GetIdempotencyLevel() != descriptorpb.MethodOptions_IDEMPOTENCY_UNKNOWN && !m.IsStreamingClient()
}

// retryableMethods are the RPCs of package driftd.v1 the transport sends again
// after UNAVAILABLE, as "/package.Service/Method", sorted: read from the
// generated file descriptors (registered by driftdv1's init) when this package
// is initialised. The server-streaming ones are retried only until the
// response starts. Every other RPC fails at the first UNAVAILABLE, as does
// grpc.health.v1.Health/Check (a probe must see the outage).
var retryableMethods = func() []string {
	var names []string
	protoregistry.GlobalFiles.RangeFilesByPackage("driftd.v1", func(fd protoreflect.FileDescriptor) bool {
		for i := range fd.Services().Len() {
			methods := fd.Services().Get(i).Methods()
			for j := range methods.Len() {
				if m := methods.Get(j); retriedByTransport(m) {
					names = append(names, fmt.Sprintf("/%s/%s", m.Parent().FullName(), m.Name()))
				}
			}
		}
		return true
	})
	slices.Sort(names)
	return names
}()

// RetryableMethods returns the full names ("/driftd.v1.PointService/GetPoints")
// of the methods a Client retries after UNAVAILABLE, sorted; every other
// method is sent once. They are the RPCs the proto marks idempotent, as in the
// Python and TypeScript clients.
func RetryableMethods() []string { return slices.Clone(retryableMethods) }

// serviceConfig retries UNAVAILABLE on the retryableMethods only (a method
// named in no methodConfig gets no retry policy), and balances round-robin
// over every address the target resolves to (with
// "dns:///driftd-headless:50051" that is every replica).
func serviceConfig(maxAttempts int) string {
	type name struct {
		Service string `json:"service"`
		Method  string `json:"method"`
	}
	type methodConfig struct {
		Name        []name         `json:"name"`
		RetryPolicy map[string]any `json:"retryPolicy"`
	}
	config := map[string]any{"loadBalancingConfig": []any{map[string]any{"round_robin": map[string]any{}}}}
	if maxAttempts > 1 {
		names := make([]name, 0, len(retryableMethods))
		for _, m := range retryableMethods {
			service, method, _ := strings.Cut(strings.TrimPrefix(m, "/"), "/")
			names = append(names, name{service, method})
		}
		config["methodConfig"] = []methodConfig{{Name: names, RetryPolicy: map[string]any{
			"maxAttempts":          min(maxAttempts, 5),
			"initialBackoff":       "0.1s",
			"maxBackoff":           "2s",
			"backoffMultiplier":    2,
			"retryableStatusCodes": []string{"UNAVAILABLE"},
		}}}
	}
	js, err := json.Marshal(config)
	if err != nil {
		panic(err) // plain maps, slices and strings always marshal
	}
	return string(js)
}

// New connects to a driftd server at target ("host:port", or any gRPC target
// such as "dns:///driftd-headless.ns.svc:50051"). The connection is made
// lazily, on the first call.
func New(target string, opts ...Option) (*Client, error) {
	o := options{timeout: DefaultTimeout, maxAttempts: DefaultMaxAttempts, creds: insecure.NewCredentials()}
	for _, opt := range opts {
		opt(&o)
	}
	secure := o.tls != nil
	if o.tls != nil {
		creds, err := o.tls.credentials()
		if err != nil {
			return nil, err
		}
		o.creds = creds
	} else {
		secure = o.creds.Info().SecurityProtocol != "insecure"
	}
	if o.apiKey != "" {
		if !secure && !loopback(target) {
			return nil, fmt.Errorf("driftd: an API key needs TLS to reach %q (WithTLS); without TLS keys go only to loopback targets", target)
		}
		o.dial = append(o.dial, grpc.WithPerRPCCredentials(bearer{header: "Bearer " + o.apiKey, secure: secure}))
	}
	c := &Client{timeout: o.timeout}
	dial := []grpc.DialOption{
		grpc.WithTransportCredentials(o.creds),
		grpc.WithDefaultServiceConfig(serviceConfig(o.maxAttempts)),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(DefaultMaxMessage),
			grpc.MaxCallSendMsgSize(DefaultMaxMessage),
		),
		// Within the server's policy (pings no more often than every 10 s).
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		// Reconnect to a restarted server within 10 s (gRPC's default backoff grows to 2 min).
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 500 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 10 * time.Second},
			MinConnectTimeout: 10 * time.Second,
		}),
		grpc.WithUnaryInterceptor(c.deadline),
	}
	conn, err := grpc.NewClient(target, append(dial, o.dial...)...)
	if err != nil {
		return nil, err
	}
	c.conn = conn
	c.Collections = driftdv1.NewCollectionServiceClient(conn)
	c.Points = driftdv1.NewPointServiceClient(conn)
	c.Flow = driftdv1.NewFlowServiceClient(conn)
	return c, nil
}

// deadline gives unary calls without a deadline the client's default one.
func (c *Client) deadline(ctx context.Context, method string, req, reply any,
	cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if _, ok := ctx.Deadline(); !ok && c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	return invoker(ctx, method, req, reply, cc, opts...)
}

// Conn is the underlying connection (for other services, e.g. health).
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// CollectionName is the resource name of a collection id: "collections/{id}".
func CollectionName(id string) string { return "collections/" + id }

// CreateCollection creates the collection id with settings (dimension,
// distance, embed model; nil means the server's defaults).
func (c *Client) CreateCollection(ctx context.Context, id string, settings *driftdv1.Collection) (*driftdv1.Collection, error) {
	return c.Collections.CreateCollection(ctx, &driftdv1.CreateCollectionRequest{CollectionId: id, Collection: settings})
}

// GetCollection gets a collection with its counts, time span and version.
func (c *Client) GetCollection(ctx context.Context, id string) (*driftdv1.Collection, error) {
	return c.Collections.GetCollection(ctx, &driftdv1.GetCollectionRequest{Name: CollectionName(id)})
}

// DeleteCollection deletes a collection and its points.
func (c *Client) DeleteCollection(ctx context.Context, id string) error {
	_, err := c.Collections.DeleteCollection(ctx, &driftdv1.DeleteCollectionRequest{Name: CollectionName(id)})
	return err
}

// ListCollections yields every collection in name order, fetching pages as
// the loop goes; it stops at the first error, which it yields.
func (c *Client) ListCollections(ctx context.Context) iter.Seq2[*driftdv1.Collection, error] {
	return func(yield func(*driftdv1.Collection, error) bool) {
		token := ""
		for {
			page, err := c.Collections.ListCollections(ctx, &driftdv1.ListCollectionsRequest{PageToken: token})
			if err != nil {
				yield(nil, err)
				return
			}
			for _, col := range page.GetCollections() {
				if !yield(col, nil) {
					return
				}
			}
			if token = page.GetNextPageToken(); token == "" {
				return
			}
		}
	}
}

// Upsert writes one batch of points (validated whole: an invalid point fails
// the call and nothing is written).
func (c *Client) Upsert(ctx context.Context, id string, points ...*driftdv1.Point) (*driftdv1.UpsertPointsResponse, error) {
	return c.Points.UpsertPoints(ctx, &driftdv1.UpsertPointsRequest{Parent: CollectionName(id), Points: points})
}

// Trajectory yields the points of req's time window in time order (req.Parent
// may be a bare collection id). Cancel ctx to stop early.
func (c *Client) Trajectory(ctx context.Context, req *driftdv1.GetTrajectoryRequest) iter.Seq2[*driftdv1.Point, error] {
	return func(yield func(*driftdv1.Point, error) bool) {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		if !strings.HasPrefix(req.GetParent(), "collections/") {
			req = proto.CloneOf(req)
			req.Parent = CollectionName(req.Parent)
		}
		stream, err := c.Points.GetTrajectory(ctx, req)
		if err != nil {
			yield(nil, err)
			return
		}
		for {
			chunk, err := stream.Recv()
			if err != nil {
				if !isEOF(err) {
					yield(nil, err)
				}
				return
			}
			for _, p := range chunk.GetPoints() {
				if !yield(p, nil) {
					return
				}
			}
		}
	}
}

// Probe is the local velocity of the flow at start.
func (c *Client) Probe(ctx context.Context, id string, start *driftdv1.FlowStart) (*driftdv1.ProbeFlowResponse, error) {
	return c.Flow.ProbeFlow(ctx, &driftdv1.ProbeFlowRequest{Parent: CollectionName(id), Start: start})
}

// Simulate yields the steps of simulated paths as the server streams them
// (req.Parent may be a bare collection id). Breaking out of the loop cancels
// the call, which stops the server's work.
func (c *Client) Simulate(ctx context.Context, req *driftdv1.SimulatePathsRequest) iter.Seq2[*driftdv1.SimulatePathsResponse, error] {
	return func(yield func(*driftdv1.SimulatePathsResponse, error) bool) {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		if !strings.HasPrefix(req.GetParent(), "collections/") {
			req = proto.CloneOf(req)
			req.Parent = CollectionName(req.Parent)
		}
		stream, err := c.Flow.SimulatePaths(ctx, req)
		if err != nil {
			yield(nil, err)
			return
		}
		for {
			step, err := stream.Recv()
			if err != nil {
				if !isEOF(err) {
					yield(nil, err)
				}
				return
			}
			if !yield(step, nil) {
				return
			}
		}
	}
}

// AtVector starts a probe or simulation at a vector.
func AtVector(v []float32) *driftdv1.FlowStart {
	return &driftdv1.FlowStart{Start: &driftdv1.FlowStart_Vector{Vector: &driftdv1.FloatVector{Values: v}}}
}

// AtText starts a probe or simulation at a text (embedded server-side).
func AtText(text string) *driftdv1.FlowStart {
	return &driftdv1.FlowStart{Start: &driftdv1.FlowStart_Text{Text: text}}
}

// AtPoint starts a probe or simulation at a stored point.
func AtPoint(id string) *driftdv1.FlowStart {
	return &driftdv1.FlowStart{Start: &driftdv1.FlowStart_PointId{PointId: id}}
}

// NewPoint is a point with a vector (text and payload may be added).
func NewPoint(id, series string, t time.Time, vector []float32) *driftdv1.Point {
	return &driftdv1.Point{Id: id, Series: series, Time: timestamppb.New(t), Vector: vector}
}
