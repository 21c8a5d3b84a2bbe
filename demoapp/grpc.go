package demoapp

import (
	"context"
	"math/rand/v2"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// grpcServer is the app's gRPC service, served on its HTTP port to
// HTTP/2 requests of content type application/grpc: the standard health
// service (grpc.health.v1.Health/Check answers SERVING), under the same
// faults and counters as the HTTP API. A call may carry "sleep" metadata
// (a duration, as ?sleep=): it is answered after that, or not at all if
// its client goes away (or its deadline passes) first. A failed call
// gets UNAVAILABLE.
func grpcServer(f *faults, c *counters) *grpc.Server {
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, &health{f: f, c: c})
	return gs
}

type health struct {
	healthpb.UnimplementedHealthServer
	f *faults
	c *counters
}

func (h *health) Check(ctx context.Context, _ *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	h.c.requests.Add(1)
	fail, _, delay := h.f.get()
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get("sleep"); len(v) > 0 {
			d, err := time.ParseDuration(v[0])
			if err != nil || d < 0 || d > time.Hour {
				return nil, status.Error(codes.InvalidArgument, "want sleep metadata of a duration between 0 and 1h, e.g. 5ms")
			}
			delay += d
		}
	}
	if delay > 0 {
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			h.c.cancelled.Add(1)
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
	if fail > 0 && rand.Float64() < fail {
		h.c.failed.Add(1)
		return nil, status.Error(codes.Unavailable, "demo-app: failing on command")
	}
	return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
}
