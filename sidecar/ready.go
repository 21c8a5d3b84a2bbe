package sidecar

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"time"
)

// ErrExited is WaitReady's error when the sidecar's process ended first.
var ErrExited = errors.New("sidecar exited before it was ready")

// WaitReady waits until the sidecar whose health server listens on port
// answers 200 on /healthz/ready at 127.0.0.1, dialing with dial (so from
// inside the sidecar's network namespace), trying every 20 ms. It returns
// ErrExited as soon as exited is closed (nil: never), and when ctx ends,
// an error with the last probe's outcome.
func WaitReady(ctx context.Context, dial func(ctx context.Context, network, addr string) (net.Conn, error), port uint16, exited <-chan struct{}) error {
	tr := &http.Transport{DisableKeepAlives: true, DialContext: dial}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: time.Second}
	url := "http://" + netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), port).String() + "/healthz/ready"
	var last error
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil && ctx.Err() != nil && last != nil {
			// The attempt was cut short by ctx: the one before says
			// why the sidecar is not ready.
			return fmt.Errorf("sidecar not ready (%s): %w", url, last)
		}
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("status %s", resp.Status)
		}
		last = err
		select {
		case <-exited:
			return ErrExited
		case <-ctx.Done():
			return fmt.Errorf("sidecar not ready (%s): %w", url, last)
		case <-time.After(20 * time.Millisecond):
		}
	}
}
