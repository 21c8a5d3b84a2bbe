package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"go.uber.org/zap"

	"meshgate/redirect"
)

const redirectDescription = `
Install the iptables (and ip6tables) rules that send a network namespace's
traffic through the meshgate sidecar, with no change to the workload:

  inbound   TCP to every port (or --inbound-ports) goes to the proxy's
            port 15006; the proxy's own ports (15000 admin, 15001, 15006,
            15008, 15020 metrics, 15021 health, 15053) never are
  outbound  TCP the workload opens (to --include-outbound-cidrs, minus the
            excluded ports and CIDRs) goes to the proxy's port 15001
  DNS       with --capture-dns, UDP and TCP to port 53 go to 15053

The proxy's own connections are never captured: it runs as --proxy-uid and
marks its sockets with --proxy-mark, and either alone is enough.

Running it again with the same flags changes nothing; with other flags it
changes the rules to match. If anything fails, the namespace is left as
it was. --cleanup removes everything meshgate installed, whatever flags
it was applied with (the rule flags are ignored then). --dry-run prints
the rules and changes nothing; it needs neither root nor iptables.

--self-check, after applying, proves that the rules capture traffic: a
probe connection to one of the namespace's own addresses must arrive at
the inbound port 15006 (skipped while a proxy holds that port), and where
the namespace has a route to 192.0.2.1 (TEST-NET-1), one to it at the
outbound port 15001; no probe leaves the namespace otherwise. If capture
does not work, the command fails and says what happened and why.

Applying needs root (CAP_NET_ADMIN, and CAP_SYS_ADMIN for --netns) and
iptables (apt-get install iptables). The rules go into whichever iptables
backend (nft or legacy) the namespace already uses.

Examples:
  meshgate redirect --dry-run
  meshgate redirect --exclude-inbound-ports 22 --exclude-outbound-cidrs 169.254.169.254
  meshgate redirect --netns /run/netns/web --capture-dns --dns-servers 10.96.0.10
  meshgate redirect --netns /proc/4242/ns/net --cleanup`

func runRedirect(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("redirect", "[--netns PATH] [--dry-run | --cleanup] [rule flags]", redirectDescription, stderr)
	netnsPath := fs.String("netns", "", "change the network namespace at `PATH` (e.g. /run/netns/web or /proc/PID/ns/net) instead of this process's own")
	dryRun := fs.Bool("dry-run", false, "print the rules that would be installed (iptables-save format) and change nothing")
	cleanup := fs.Bool("cleanup", false, "remove every rule, chain, route and address meshgate installed")
	logLevel := fs.String("log-level", "info", "log `level`: debug (every change), info, warn or error")
	selfCheck := fs.Bool("self-check", false, "after applying, prove with probe connections that the rules capture traffic (see above)")
	ruleConfig := redirect.AddFlags(fs)
	if err := parseFlags(fs, args, false); err != nil {
		return err
	}

	var problems []error
	if *cleanup && *dryRun {
		problems = append(problems, errors.New("--cleanup with --dry-run: --dry-run shows the rules an apply would install; drop one of them"))
	}
	if *selfCheck && (*cleanup || *dryRun) {
		problems = append(problems, errors.New("--self-check checks the rules an apply installs; it goes without --cleanup and --dry-run"))
	}
	var cfg redirect.Config
	if !*cleanup {
		var err error
		if cfg, err = ruleConfig(); err != nil {
			problems = append(problems, err)
		}
	}
	log, err := newLogger(*logLevel)
	if err != nil {
		problems = append(problems, err)
	}
	if len(problems) > 0 {
		return errors.Join(problems...)
	}
	defer log.Sync()

	opts := redirect.Options{NetnsPath: *netnsPath, Logger: log}
	switch {
	case *dryRun:
		fmt.Fprintf(stdout, "# meshgate redirect --dry-run: nothing was changed.\n# rules for: %s\n", cfg)
		if *netnsPath != "" {
			fmt.Fprintf(stdout, "# (--netns %s was not looked at: the rules do not depend on it)\n", *netnsPath)
		}
		fmt.Fprint(stdout, redirect.Build(cfg).Render())
		return nil
	case *cleanup:
		return redirect.Cleanup(ctx, opts)
	default:
		if err := redirect.Apply(ctx, cfg, opts); err != nil {
			return err
		}
		if !*selfCheck {
			return nil
		}
		res, err := redirect.SelfCheck(ctx, cfg, opts)
		if err != nil {
			return err
		}
		log.Info("redirect self-check passed", zap.String("netns", *netnsPath), zap.String("inbound", res.Inbound), zap.String("outbound", res.Outbound))
		return nil
	}
}
