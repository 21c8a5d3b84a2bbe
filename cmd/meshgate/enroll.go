package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"meshgate/enroll"
	"meshgate/netlist"
	"meshgate/nsrun"
	"meshgate/proxy"
	"meshgate/redirect"
)

func runEnroll(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("enroll", "(--pid PID | --netns PATH) [--config FILE] [--cleanup] [rule flags]", `
Enroll a running container or process into the mesh from the host, with no
restart and no change to it: meshgate starts a sidecar proxy inside the
workload's network namespace, waits until it is ready, then installs the
redirect rules there, so from that moment every new inbound and outbound
TCP connection of the workload passes through the sidecar. Connections
that were already open are left alone.

The sidecar runs detached (as --proxy-uid, keeping only CAP_NET_ADMIN so it
can mark its sockets); its PID file and log are kept under --state-dir.
"meshgate enroll --cleanup" with the same --pid or --netns removes the
rules first, then drains and stops the sidecar.

The sidecar's certificate flags (--cert-dir, --ca-server with --id,
--ca-token-file and --ca-root, or --workload-api) and --mtls-mode and
--mesh-cidrs are those of "meshgate proxy" (see its --help), passed on to
it; without a certificate the sidecar runs without mTLS.

The rule flags are those of "meshgate redirect" (see its --help). With
--pid and --capture-dns, the DNS servers to capture are read from the
workload's own /proc/PID/root/etc/resolv.conf.

Examples:
  meshgate enroll --pid 4242
  meshgate enroll --pid "$(podman inspect -f '{{.State.Pid}}' web)" --cert-dir /etc/meshgate/web
  meshgate enroll --netns /run/netns/web --exclude-outbound-ports 5432
  meshgate enroll --cleanup --netns /run/netns/web`, stderr)
	pid := fs.Int("pid", 0, "enroll the network namespace of process `PID`")
	nsPath := fs.String("netns", "", "enroll the network namespace at `PATH` (e.g. /run/netns/web)")
	configPath := fs.String("config", "", "sidecar config `FILE` (YAML, see 'meshgate proxy --help'); default: the built-in defaults")
	cleanup := fs.Bool("cleanup", false, "undo an enrollment: remove the rules, then drain and stop the sidecar")
	stateDir := fs.String("state-dir", enroll.DefaultStateDir, "where the sidecar's PID file and log are kept")
	readyTimeout := fs.Duration("ready-timeout", 15*time.Second, "how long to wait for the sidecar to become ready")
	logLevel := fs.String("log-level", "info", "log level of enroll itself and of the sidecar: debug, info, warn, error")
	mtlsMode := fs.String("mtls-mode", "", "the sidecar's `mode` of mesh mTLS: strict, permissive or disable (overrides mtls.mode of --config)")
	meshCIDRs := fs.String("mesh-cidrs", "", "comma-separated `CIDRs` of the destinations that run a sidecar (overrides mtls.meshCIDRs of --config)")
	var certs certFlags
	certs.add(fs)
	ruleConfig := redirect.AddFlags(fs)
	if err := parseFlags(fs, args, false); err != nil {
		return err
	}

	var problems []error
	switch {
	case *pid != 0 && *nsPath != "":
		problems = append(problems, errors.New("--pid and --netns: give one, not both"))
	case *pid == 0 && *nsPath == "":
		problems = append(problems, errors.New("--pid or --netns is required: which workload to enroll?"))
	case *pid < 0:
		problems = append(problems, fmt.Errorf("--pid %d: want a process ID", *pid))
	}
	if *pid > 0 && !flagSet(fs, "resolv-conf") {
		// The workload's DNS servers are in its own root, not the host's.
		_ = fs.Set("resolv-conf", fmt.Sprintf("/proc/%d/root/etc/resolv.conf", *pid))
	}
	rules, err := ruleConfig()
	if err != nil {
		problems = append(problems, err)
	}
	var pcfg proxy.Config
	if *configPath != "" && !*cleanup {
		abs, err := filepath.Abs(*configPath)
		if err == nil {
			*configPath = abs
			pcfg, err = proxy.LoadConfig(abs)
		}
		if err != nil {
			problems = append(problems, fmt.Errorf("--config: %w", err))
		}
	} else {
		pcfg = proxy.DefaultConfig()
	}
	if !*cleanup {
		problems = append(problems, certs.check()...)
		switch proxy.MTLSMode(*mtlsMode) {
		case "", proxy.MTLSStrict, proxy.MTLSPermissive, proxy.MTLSDisable:
		default:
			problems = append(problems, fmt.Errorf("--mtls-mode %q: want strict, permissive or disable", *mtlsMode))
		}
		if _, err := netlist.ParseCIDRs(*meshCIDRs); err != nil {
			problems = append(problems, netlist.Named("--mesh-cidrs", err)...)
		}
	}
	if len(problems) == 0 && !*cleanup {
		if err := enroll.Agree(rules, pcfg); err != nil {
			problems = append(problems, err)
		}
	}
	if len(problems) > 0 {
		return errors.Join(problems...)
	}
	log, err := newLogger(*logLevel)
	if err != nil {
		return err
	}
	defer log.Sync()

	path := *nsPath
	if *pid != 0 {
		path = nsrun.PathForPID(*pid)
	}
	st, err := enroll.OpenState(*stateDir, path)
	if err != nil {
		return err
	}
	e := enroll.Enrollment{State: st, Netns: path, Log: log, DrainGrace: pcfg.Timeouts.DrainGrace.D()}
	if *cleanup {
		if err := e.Undo(ctx); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "unenrolled %s: rules removed, sidecar stopped\n", path)
		return nil
	}
	sidecarArgs := []string{"proxy", "--log-level", *logLevel}
	if *configPath != "" {
		sidecarArgs = append(sidecarArgs, "--config", *configPath)
	}
	sidecarArgs = append(sidecarArgs, certs.proxyArgs()...)
	if *mtlsMode != "" {
		sidecarArgs = append(sidecarArgs, "--mtls-mode", *mtlsMode)
	}
	if *meshCIDRs != "" {
		sidecarArgs = append(sidecarArgs, "--mesh-cidrs", *meshCIDRs)
	}
	spid, err := e.Do(ctx, rules, sidecarArgs, pcfg.Health.Address.Port(), *readyTimeout)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "enrolled %s: sidecar pid %d, log %s\nundo with: meshgate enroll --cleanup --netns %s\n",
		path, spid, st.LogPath(), path)
	return nil
}
