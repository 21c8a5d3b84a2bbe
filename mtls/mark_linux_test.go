package mtls

import (
	"context"
	"testing"
	"time"

	"meshgate/internal/testca"
	"meshgate/internal/testmark"
)

// TestWorkloadAPIMarksTCP: a Workload API reached over TCP is reached
// with the sidecar's mark, read at the server from the client's own
// socket; captured otherwise, with the sidecar running as root.
func TestWorkloadAPIMarksTCP(t *testing.T) {
	ln := testmark.Listen(t, 0x539)
	ca := testca.New(t, "a.example")
	startFakeWorkloadAPIOn(t, ln, svidResponse(t, ca.Issue(t, serverID, testca.LeafOptions{}), ca))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	src, err := NewWorkloadAPISource(ctx, "tcp://"+ln.Addr().String(), 0x539, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	ln.Check(t, "the Workload API client", 1)
}
