package main

import (
	"context"
	"io"
	"testing"
)

// TestProxyKubernetesFlags: --app-probes and --exit-with-app come from
// the environment too, the flag wins, and a bad value names where it
// came from.
func TestProxyKubernetesFlags(t *testing.T) {
	const badMode = `--mtls-mode "tight": want strict, permissive or disable`
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"bad JSON in the environment", map[string]string{"MESHGATE_APP_PROBES": "{"}, nil,
			"MESHGATE_APP_PROBES: not a JSON object of path to probe: unexpected end of JSON input"},
		{"a bad entry in the flag", nil, []string{"--app-probes", `{"/app-health/web/readyz":{"httpGet":{"port":70000}}}`},
			`--app-probes: entry "/app-health/web/readyz": httpGet.port 70000: want 1-65535`},
		{"the flag wins over the environment", map[string]string{"MESHGATE_APP_PROBES": "{"},
			[]string{"--app-probes", `{"/app-health/web/readyz":{"tcpSocket":{"port":8080}}}`, "--mtls-mode", "tight"}, badMode},
		{"an empty flag wins too", map[string]string{"MESHGATE_APP_PROBES": "{"},
			[]string{"--app-probes", "", "--mtls-mode", "tight"}, badMode},
		{"bad exit-with-app in the environment", map[string]string{"MESHGATE_EXIT_WITH_APP": "yes"}, nil,
			`MESHGATE_EXIT_WITH_APP "yes": want true or false`},
		{"the exit-with-app flag wins", map[string]string{"MESHGATE_EXIT_WITH_APP": "yes"},
			[]string{"--exit-with-app=false", "--mtls-mode", "tight"}, badMode},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("MESHGATE_APP_PROBES", "")
			t.Setenv("MESHGATE_EXIT_WITH_APP", "")
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			err := runProxy(context.Background(), append(tc.args, "--config", testProxyConfig(t)), io.Discard, io.Discard)
			if err == nil || err.Error() != tc.want {
				t.Fatalf("error:\n got %v\nwant %s", err, tc.want)
			}
		})
	}
}
