// Quickstart: create a collection, stream timelines into it, probe the flow
// and follow a simulated path.
//
//	go run ./examples/quickstart -target 127.0.0.1:50051
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"math"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/driftd/driftd/clients/go/driftd"
	"github.com/driftd/driftd/clients/go/driftdv1"
)

func main() {
	target := flag.String("target", "127.0.0.1:50051", "driftd address")
	id := flag.String("collection", "go-quickstart", "collection id (recreated)")
	flag.Parse()
	ctx := context.Background()

	c, err := driftd.New(*target)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	// Start afresh: drop the collection if a previous run left it.
	if err := c.DeleteCollection(ctx, *id); err != nil && driftd.Code(err) != codes.NotFound {
		log.Fatal(err)
	}
	if _, err := c.CreateCollection(ctx, *id, &driftdv1.Collection{Dimension: 2, Distance: driftdv1.Distance_DISTANCE_L2}); err != nil {
		log.Fatal(err)
	}

	// Four timelines spiralling into the origin, streamed in one batch each.
	w := c.NewWriter(*id)
	start := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	for s := range 4 {
		angle := float64(s) * math.Pi / 2
		var batch []*driftdv1.Point
		for i := range 40 {
			r := 3 * math.Exp(-0.05*float64(i))
			a := angle + 0.1*float64(i)
			batch = append(batch, driftd.NewPoint(fmt.Sprintf("s%d-%02d", s, i), fmt.Sprintf("spiral-%d", s),
				start.Add(time.Duration(i)*time.Hour), []float32{float32(r * math.Cos(a)), float32(r * math.Sin(a))}))
		}
		ack, err := w.Write(ctx, batch...)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("batch %d acknowledged: %d points written (collection version %d)\n",
			ack.GetSequence(), ack.GetAcceptedCount(), ack.GetCollectionVersion())
	}
	if err := w.Close(); err != nil {
		log.Fatal(err)
	}

	probe, err := c.Probe(ctx, *id, driftd.AtVector([]float32{2, 0}))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("flow at (2, 0): velocity %.3g per second, confidence %.2f, nearest point %s\n",
		probe.GetVelocity(), probe.GetConfidence(), probe.GetNearestPointId())

	fmt.Println("simulated path from s0-00:")
	for step, err := range c.Simulate(ctx, &driftdv1.SimulatePathsRequest{
		Parent: *id, Start: driftd.AtPoint("s0-00"), Steps: 12, IncludeVectors: true,
	}) {
		if err != nil {
			var reason string
			if reason, _ = driftd.Reason(err); reason == "" {
				reason = err.Error()
			}
			log.Fatal(errors.New(reason))
		}
		fmt.Printf("  step %2d  %s  (%.2f, %.2f)  nearest %s %s\n", step.GetStep(),
			step.GetTime().AsTime().Format(time.DateTime), step.GetPosition()[0], step.GetPosition()[1],
			step.GetNearestPointId(), step.GetStopReason())
	}
}
