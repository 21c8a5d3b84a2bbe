package main

import (
	"context"
	"io"
	"os"

	"go.uber.org/zap"

	initcontainer "meshgate/init-container"
)

const initDescription = `
The init container's entry point: install the capture rules in this
network namespace (as 'meshgate redirect' does), then prove that they
capture traffic with probe connections (as 'meshgate redirect
--self-check' does; an outbound probe leaves with a hop limit of 1, so one
that is not captured goes no further than the first router). Exit 0 with a short summary, or 1
with one line saying what failed; a failed install leaves nothing behind.

Every flag can also be set in the environment as MESHGATE_<FLAG>, e.g.
MESHGATE_EXCLUDE_INBOUND_PORTS=22, MESHGATE_CAPTURE_DNS=true,
MESHGATE_PROXY_UID=1337, MESHGATE_SELF_CHECK=false; a flag on the command
line wins, and an empty variable counts as unset.

It needs CAP_NET_ADMIN and CAP_NET_RAW (runAsUser 0 in the init
container) and iptables in the image. See init-container/README.md.`

func runInit(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("init", "[rule flags of 'meshgate redirect'] [--self-check=false]", initDescription, stderr)
	options := initcontainer.AddFlags(fs)
	if err := parseFlags(fs, args, false); err != nil {
		return err
	}
	o, err := options(os.LookupEnv)
	if err != nil {
		return err
	}
	log, err := newLogger(o.LogLevel.String())
	if err != nil {
		return err
	}
	defer log.Sync()
	return initcontainer.Run(ctx, o, log.With(zap.String("command", "init")), stdout)
}
