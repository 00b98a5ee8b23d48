package driftd_test

// Which RPCs the client retries after UNAVAILABLE. These tests do not use
// driftd: the second one runs against a fake server that fails every call.

import (
	"context"
	"fmt"
	"net"
	"slices"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/driftd/driftd/clients/go/driftd"
	"github.com/driftd/driftd/clients/go/driftdv1"
)

// notIdempotent are the RPCs the proto deliberately leaves unmarked
// (IDEMPOTENCY_UNKNOWN): a repeat after a lost answer could change something
// (why: each RPC's comment in proto/driftd/v1). A new RPC must be marked in
// the proto or listed here (and in the Python and TypeScript retry tests).
var notIdempotent = []string{
	"/driftd.v1.CollectionService/CreateCollection",
	"/driftd.v1.CollectionService/AttachCollection",
	"/driftd.v1.CollectionService/DeleteCollection",
	"/driftd.v1.CollectionService/ImportCollection",
	"/driftd.v1.MonitorService/CreateDriftRule",
	"/driftd.v1.MonitorService/DeleteDriftRule",
	"/driftd.v1.BehaviorService/ProcessBehaviors",
	"/driftd.v1.RoutingService/RouteMessage",
}

// resumedByTheWriter is marked IDEMPOTENT but never re-sent by the transport,
// because the client streams its requests: the Writer resumes it after the
// last acknowledged batch.
const resumedByTheWriter = "/driftd.v1.PointService/StreamUpsertPoints"

// driftdMethods are every RPC of the generated driftdv1 package: the services
// of each of its file descriptors, found in the registry so that a new .proto
// file is covered too.
func driftdMethods(t *testing.T) []protoreflect.MethodDescriptor {
	t.Helper()
	files := 0
	var methods []protoreflect.MethodDescriptor
	protoregistry.GlobalFiles.RangeFilesByPackage("driftd.v1", func(fd protoreflect.FileDescriptor) bool {
		files++
		for i := range fd.Services().Len() {
			svc := fd.Services().Get(i)
			for j := range svc.Methods().Len() {
				methods = append(methods, svc.Methods().Get(j))
			}
		}
		return true
	})
	// The package is linked in: its files registered themselves.
	if files == 0 || driftdv1.File_driftd_v1_point_proto.Services().Len() == 0 {
		t.Fatal("no driftd.v1 file descriptors registered")
	}
	return methods
}

func fullName(m protoreflect.MethodDescriptor) string {
	return fmt.Sprintf("/%s/%s", m.Parent().FullName(), m.Name())
}

func TestEveryRPCHasARetryDecision(t *testing.T) {
	var marked []string
	known := map[string]bool{}
	for _, m := range driftdMethods(t) {
		name := fullName(m)
		known[name] = true
		opts, _ := m.Options().(*descriptorpb.MethodOptions)
		isMarked := opts.GetIdempotencyLevel() != descriptorpb.MethodOptions_IDEMPOTENCY_UNKNOWN
		if isMarked == slices.Contains(notIdempotent, name) {
			t.Errorf("%s: mark its idempotency_level in the proto, or list it in notIdempotent", name)
		}
		if isMarked && name != resumedByTheWriter {
			marked = append(marked, name)
		}
	}
	for _, name := range append(slices.Clone(notIdempotent), resumedByTheWriter) {
		if !known[name] {
			t.Errorf("%s is listed but is not an RPC of driftdv1", name)
		}
	}
	slices.Sort(marked)
	if got := driftd.RetryableMethods(); !slices.Equal(got, marked) {
		t.Errorf("RetryableMethods() = %v,\nwant the RPCs the proto marks idempotent that send one request: %v", got, marked)
	}
}

// failingServer answers every call with UNAVAILABLE and counts the attempts
// per method.
type failingServer struct {
	mu       sync.Mutex
	attempts map[string]int
}

func (f *failingServer) handle(_ any, stream grpc.ServerStream) error {
	method, _ := grpc.MethodFromServerStream(stream)
	f.mu.Lock()
	f.attempts[method]++
	f.mu.Unlock()
	return status.Error(codes.Unavailable, "down for the test")
}

func (f *failingServer) count(method string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.attempts[method]
}

// call makes one call of m as a stub would, with an empty request.
func call(ctx context.Context, conn *grpc.ClientConn, m protoreflect.MethodDescriptor) error {
	name := fullName(m)
	if !m.IsStreamingClient() && !m.IsStreamingServer() {
		return conn.Invoke(ctx, name, &emptypb.Empty{}, &emptypb.Empty{})
	}
	desc := &grpc.StreamDesc{StreamName: string(m.Name()), ServerStreams: m.IsStreamingServer(), ClientStreams: m.IsStreamingClient()}
	stream, err := conn.NewStream(ctx, desc, name)
	if err != nil {
		return err
	}
	if err := stream.SendMsg(&emptypb.Empty{}); err != nil {
		return stream.RecvMsg(&emptypb.Empty{}) // the status that broke the send
	}
	if err := stream.CloseSend(); err != nil {
		return err
	}
	return stream.RecvMsg(&emptypb.Empty{})
}

func TestRetriesOnlyRetryableMethods(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fake := &failingServer{attempts: map[string]int{}}
	s := grpc.NewServer(grpc.UnknownServiceHandler(fake.handle))
	go func() { _ = s.Serve(lis) }()
	t.Cleanup(s.Stop)

	const maxAttempts = 3
	c, err := driftd.New(lis.Addr().String(), driftd.WithMaxAttempts(maxAttempts))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	once, err := driftd.New(lis.Addr().String(), driftd.WithMaxAttempts(1))
	if err != nil {
		t.Fatal(err)
	}
	defer once.Close()

	ctx := context.Background()
	retried := driftd.RetryableMethods()
	methods := driftdMethods(t)
	methods = append(methods, healthCheck(t))
	for _, m := range methods {
		name := fullName(m)
		want := 1
		if slices.Contains(retried, name) {
			want = maxAttempts
		}
		for _, tc := range []struct {
			conn *grpc.ClientConn
			want int
			desc string
		}{{c.Conn(), want, ""}, {once.Conn(), 1, " with WithMaxAttempts(1)"}} {
			before := fake.count(name)
			if err := call(ctx, tc.conn, m); status.Code(err) != codes.Unavailable {
				t.Fatalf("%s%s: want UNAVAILABLE, got %v", name, tc.desc, err)
			}
			if got := fake.count(name) - before; got != tc.want {
				t.Errorf("%s%s: %d attempts, want %d", name, tc.desc, got, tc.want)
			}
		}
	}
}

// healthCheck is grpc.health.v1.Health/Check (registered by the health
// package, which client_test.go imports).
func healthCheck(t *testing.T) protoreflect.MethodDescriptor {
	t.Helper()
	d, err := protoregistry.GlobalFiles.FindDescriptorByName("grpc.health.v1.Health")
	if err != nil {
		t.Fatal(err)
	}
	return d.(protoreflect.ServiceDescriptor).Methods().ByName("Check")
}
