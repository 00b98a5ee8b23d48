package driftd

import (
	"context"
	"errors"
	"io"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/driftd/driftd/clients/go/driftdv1"
)

// Writer streams batches of points into one collection over
// StreamUpsertPoints. Each Write sends one batch and returns the server's
// acknowledgement, which arrives only once the batch is durably written (so a
// fast writer goes at the store's pace). When the stream breaks with
// UNAVAILABLE (a restart, a lost connection), Write reconnects with backoff
// (up to 16 tries, about a minute) and re-sends the unacknowledged batch: upserts are idempotent, and the new
// stream resumes after the last acknowledged sequence.
//
// A Writer is not safe for concurrent use; Close it when done.
type Writer struct {
	c           *Client
	parent      string
	maxAttempts int
	stream      driftdv1.PointService_StreamUpsertPointsClient
	cancel      context.CancelFunc
	lastAcked   int64
}

// NewWriter returns a Writer for the collection id. The stream opens on the
// first Write.
func (c *Client) NewWriter(id string) *Writer {
	return &Writer{c: c, parent: CollectionName(id), maxAttempts: 16}
}

// LastAcked is the sequence number of the last acknowledged batch (0 before any).
func (w *Writer) LastAcked() int64 { return w.lastAcked }

// Write sends points as the next batch and waits for its acknowledgement,
// which lists any points the server rejected (valid points of the batch are
// written). ctx bounds the whole stream when Write opens it, and this call.
func (w *Writer) Write(ctx context.Context, points ...*driftdv1.Point) (*driftdv1.StreamUpsertPointsResponse, error) {
	seq := w.lastAcked + 1
	backoff := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		ack, err := w.send(ctx, seq, points)
		if err == nil {
			w.lastAcked = ack.GetSequence()
			return ack, nil
		}
		w.reset()
		if status.Code(err) != codes.Unavailable || attempt >= w.maxAttempts {
			return nil, err
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

func (w *Writer) send(ctx context.Context, seq int64, points []*driftdv1.Point) (*driftdv1.StreamUpsertPointsResponse, error) {
	if w.stream == nil {
		sctx, cancel := context.WithCancel(ctx)
		stream, err := w.c.Points.StreamUpsertPoints(sctx)
		if err != nil {
			cancel()
			return nil, err
		}
		w.stream, w.cancel = stream, cancel
	}
	err := w.stream.Send(&driftdv1.StreamUpsertPointsRequest{Parent: w.parent, Sequence: seq, Points: points})
	if err != nil {
		// The real status comes with Recv.
		if _, rerr := w.stream.Recv(); rerr != nil && !errors.Is(rerr, io.EOF) {
			return nil, rerr
		}
		return nil, err
	}
	ack, err := w.stream.Recv()
	if errors.Is(err, io.EOF) {
		return nil, status.Error(codes.Unavailable, "the server closed the stream before acknowledging")
	}
	return ack, err
}

func (w *Writer) reset() {
	if w.cancel != nil {
		w.cancel()
	}
	w.stream, w.cancel = nil, nil
}

// Close ends the stream (every written batch was already acknowledged).
func (w *Writer) Close() error {
	if w.stream == nil {
		return nil
	}
	defer w.reset()
	if err := w.stream.CloseSend(); err != nil {
		return err
	}
	if _, err := w.stream.Recv(); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	return nil
}
