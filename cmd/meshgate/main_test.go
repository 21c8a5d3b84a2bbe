package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestDispatch pins the command-line contract that does not depend on any
// one subcommand: exit codes, help, and one-line errors.
func TestDispatch(t *testing.T) {
	cases := []struct {
		name      string
		args      []string
		code      int
		stdout    string // substring
		stderr    string // substring
		stderrOne bool   // stderr is exactly one line
	}{
		{name: "no args prints usage", args: nil, code: 2, stdout: "Commands:"},
		{name: "help", args: []string{"help"}, code: 0, stdout: "redirect"},
		{name: "help hides internal commands", args: []string{"--help"}, code: 0, stdout: "enroll"},
		{name: "unknown command", args: []string{"frobnicate"}, code: 2, stderr: `meshgate: unknown command "frobnicate"; run 'meshgate help' for the list`, stderrOne: true},
		{name: "version", args: []string{"version"}, code: 0, stdout: "meshgate "},
		{name: "command help", args: []string{"help", "enroll"}, code: 0, stderr: "Usage: meshgate enroll"},
		{name: "unknown flag", args: []string{"version", "--bogus"}, code: 2, stderr: "flag provided but not defined: -bogus"},
		{name: "stray argument", args: []string{"version", "extra"}, code: 2, stderr: `unexpected argument "extra"`},
		{name: "package prefix said once", args: []string{"proxy", "--config", "/nonexistent/proxy.yaml"}, code: 1,
			stderr: "meshgate proxy: read config: open /nonexistent/proxy.yaml: no such file or directory\n", stderrOne: true},
		{name: "demo-app needs something to serve", args: []string{"demo-app"}, code: 1,
			stderr: "meshgate demo-app: nothing to serve: give --http ADDR, --echo ADDR or both", stderrOne: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := mainExit(tc.args, &stdout, &stderr)
			if code != tc.code {
				t.Errorf("exit code %d, want %d; stderr: %s", code, tc.code, stderr.String())
			}
			if !strings.Contains(stdout.String(), tc.stdout) {
				t.Errorf("stdout %q lacks %q", stdout.String(), tc.stdout)
			}
			if !strings.Contains(stderr.String(), tc.stderr) {
				t.Errorf("stderr %q lacks %q", stderr.String(), tc.stderr)
			}
			if tc.stderrOne && strings.Count(stderr.String(), "\n") != 1 {
				t.Errorf("stderr is not one line: %q", stderr.String())
			}
			if strings.Contains(stdout.String(), "demo-app") {
				t.Errorf("usage lists the internal demo-app command")
			}
		})
	}
}
