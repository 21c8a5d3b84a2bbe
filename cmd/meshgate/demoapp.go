package main

import (
	"context"
	"fmt"
	"io"

	"meshgate/demoapp"
)

// runDemoApp is the example workload of the demo and the e2e tests: an
// ordinary HTTP server and a TCP echo server that know nothing of the mesh.
func runDemoApp(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("demo-app", "[--http ADDR] [--echo ADDR] [--name NAME]", `
An example workload for meshgate demo and the end-to-end tests. It knows
nothing about the mesh. HTTP/1.x and HTTP/2 without TLS (h2c, prior
knowledge or Upgrade) on --http. Endpoints:
  GET  /            who answered and what it saw (JSON: name, method, path,
                    remote, host, proto, and the headers a mesh adds:
                    client_cert, request_id, traceparent)
  GET  /bytes?n=N   N bytes of deterministic data; X-Content-Sha256 gives their hash
  POST /sha256      the length and SHA-256 of the request body (JSON)
  GET  /ws          a WebSocket echo
The echo server writes back what it reads and closes its side after the
client closes its own (TCP half-close).`, stderr)
	httpAddr := fs.String("http", "", "serve HTTP on `ADDR` (e.g. :8080)")
	echoAddr := fs.String("echo", "", "serve TCP echo on `ADDR` (e.g. :9000)")
	name := fs.String("name", "app", "name reported in responses")
	if err := parseFlags(fs, args, false); err != nil {
		return err
	}
	app, err := demoapp.Listen(*name, *httpAddr, *echoAddr)
	if err != nil {
		return err
	}
	if a := app.HTTPAddr(); a != nil {
		fmt.Fprintf(stdout, "demo-app %s: HTTP on %s\n", *name, a)
	}
	if a := app.EchoAddr(); a != nil {
		fmt.Fprintf(stdout, "demo-app %s: TCP echo on %s\n", *name, a)
	}
	return app.Serve(ctx)
}
