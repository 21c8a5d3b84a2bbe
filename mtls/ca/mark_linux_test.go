package ca

import (
	"context"
	"crypto/x509"
	"testing"
	"time"

	"meshgate/internal/testmark"
	"meshgate/mtls"
)

// TestCAClientMarksSockets: the CA client's connections, for the first
// certificate and for renewals, carry CAClientConfig.Mark, read at the CA
// server as each is accepted from the client's own socket. The capture
// rules exempt the sidecar by that mark; with the sidecar running as
// root, an unmarked connection to the CA would be captured.
func TestCAClientMarksSockets(t *testing.T) {
	ln := testmark.Listen(t, 0x539)
	c, addr, _ := serveCAOn(t, ln, 2*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	src, err := mtls.NewCAClientSource(ctx, mtls.CAClientConfig{Server: addr, ID: webID, Token: webToken,
		Roots: []*x509.Certificate{c.Root()}, Mark: 0x539}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	first := serial(src)
	waitFor(t, "a renewal", func() bool { return serial(src) != first })
	ln.Check(t, "the CA client (a certificate and a renewal)", 2)
}
