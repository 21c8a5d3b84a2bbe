package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"meshgate/intercept"
	"meshgate/sidecar"
)

const waitDescription = `
Wait until the sidecar in this network namespace is ready: until
http://127.0.0.1:PORT/healthz/ready answers 200. Exit 0 then, or 1 with the
last error once --timeout has passed.

It is the postStart hook of a classic (non-native) sidecar container, so
that kubelet starts the app's containers only once the sidecar carries
their traffic:

  lifecycle: {postStart: {exec: {command: [meshgate, wait, --timeout, 60s]}}}`

func runWait(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("wait", "[--port 15021] [--timeout 60s]", waitDescription, stderr)
	port := fs.Uint("port", uint(intercept.HealthPort), "the sidecar's health `port`")
	timeout := fs.Duration("timeout", 60*time.Second, "give up after this `duration`")
	if err := parseFlags(fs, args, false); err != nil {
		return err
	}
	var problems []error
	if *port < 1 || *port > 65535 {
		problems = append(problems, fmt.Errorf("--port %d: want 1-65535", *port))
	}
	if *timeout <= 0 {
		problems = append(problems, fmt.Errorf("--timeout %s: want a positive duration, e.g. 60s", *timeout))
	}
	if len(problems) > 0 {
		return errors.Join(problems...)
	}
	wctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	err := sidecar.WaitReady(wctx, (&net.Dialer{}).DialContext, uint16(*port), nil)
	if err == nil {
		return nil
	}
	if last := errors.Unwrap(err); last != nil {
		err = last
	}
	if ctx.Err() != nil {
		return fmt.Errorf("stopped before the sidecar was ready: %w", err)
	}
	return fmt.Errorf("the sidecar was not ready within %s: %w", seconds(*timeout), err)
}

// seconds prints a whole number of seconds as "60s" (not "1m0s", as the
// flag was likely written), anything else as time.Duration does.
func seconds(d time.Duration) string {
	if d%time.Second == 0 {
		return fmt.Sprintf("%ds", d/time.Second)
	}
	return d.String()
}
