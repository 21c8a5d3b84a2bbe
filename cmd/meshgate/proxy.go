package main

import (
	"context"
	"io"

	"meshgate/proxy"
)

const proxyDescription = `
Run the sidecar proxy. It needs no configuration: without --config it runs
on these defaults, which match what 'meshgate redirect' installs.

  15001  outbound capture: connections the app makes, IPv4 and IPv6,
         forwarded to their original destination (SO_ORIGINAL_DST)
  15006  inbound capture: connections made to the app, forwarded to the
         app at the original destination address, from 127.0.0.6 (::6)
  15000  admin, on 127.0.0.1 only: /config, POST /quitquitquit,
         /debug/pprof/
  15020  Prometheus metrics: /metrics
  15021  health: /healthz/ready (200 once listening, 503 while draining),
         /healthz/live

Its own connections carry socket mark 0x539, which the capture rules
exempt. Connect timeout 10s, idle timeout 1h. On SIGTERM it stops
accepting, reports not ready, lets open connections finish for 5s, then
closes them and exits 0.

A --config file is YAML; it overrides only the fields it names, and
unknown fields are errors. For example:

  mode: redirect            # or tproxy
  logLevel: info            # debug, info, warn, error
  mark: 0x539
  outbound: {port: 15001}
  inbound: {port: 15006, passthroughSourceIPv4: 127.0.0.6, passthroughSourceIPv6: "::6"}
  admin: {address: "127.0.0.1:15000"}
  metrics: {address: "0.0.0.0:15020"}   # 0.0.0.0 or [::]: every address, IPv4 and IPv6
  health: {address: "0.0.0.0:15021"}
  timeouts: {connect: 10s, idle: 1h, drainGrace: 5s}

GET /config on the admin port shows the configuration in effect.`

func runProxy(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("proxy", "[--config FILE] [--log-level LEVEL]", proxyDescription, stderr)
	configPath := fs.String("config", "", "YAML config `file` (default: none, the defaults above)")
	logLevel := fs.String("log-level", "", "log `level`: debug, info, warn or error (overrides logLevel in the config; default info)")
	if err := parseFlags(fs, args, false); err != nil {
		return err
	}

	cfg := proxy.DefaultConfig()
	if *configPath != "" {
		var err error
		if cfg, err = proxy.LoadConfig(*configPath); err != nil {
			return err
		}
	}
	if *logLevel != "" {
		cfg.LogLevel = *logLevel
	}
	log, err := newLogger(cfg.LogLevel)
	if err != nil {
		return err
	}
	defer log.Sync()

	p, err := proxy.New(cfg, log)
	if err != nil {
		return err
	}
	return p.Run(ctx)
}
