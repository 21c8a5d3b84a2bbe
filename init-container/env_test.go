package initcontainer

import (
	"flag"
	"io"
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap/zapcore"

	"meshgate/redirect"
)

func TestEnvName(t *testing.T) {
	for flag, want := range map[string]string{
		"exclude-inbound-ports": "MESHGATE_EXCLUDE_INBOUND_PORTS",
		"capture-dns":           "MESHGATE_CAPTURE_DNS",
		"proxy-uid":             "MESHGATE_PROXY_UID",
		"ipv6":                  "MESHGATE_IPV6",
		"self-check":            "MESHGATE_SELF_CHECK",
	} {
		if got := EnvName(flag); got != want {
			t.Errorf("EnvName(%q) = %q, want %q", flag, got, want)
		}
	}
}

// parse runs the flags of meshgate init on args and env.
func parse(t *testing.T, args []string, env map[string]string) (Options, error) {
	t.Helper()
	fs := flag.NewFlagSet("meshgate init", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	options := AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return options(func(k string) (string, bool) { v, ok := env[k]; return v, ok })
}

func TestFromEnv(t *testing.T) {
	resolv := t.TempDir() + "/resolv.conf"
	if err := os.WriteFile(resolv, []byte("nameserver 10.96.0.10\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	o, err := parse(t, []string{"--proxy-uid", "2000"}, map[string]string{
		"MESHGATE_EXCLUDE_INBOUND_PORTS":  "22,15090",
		"MESHGATE_CAPTURE_DNS":            "true",
		"MESHGATE_RESOLV_CONF":            resolv,
		"MESHGATE_PROXY_UID":              "1337", // the flag wins
		"MESHGATE_INCLUDE_OUTBOUND_CIDRS": "",     // empty: unset
		"MESHGATE_SELF_CHECK":             "false",
		"MESHGATE_LOG_LEVEL":              "debug",
		"MESHGATE_UNRELATED":              "x",
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := o.Config.String(); got != "--mode=redirect --ipv6=auto --proxy-uid=2000 --proxy-mark=0x539 --inbound-ports=* --exclude-inbound-ports=22,15090 --include-outbound-cidrs=* --capture-dns --dns-servers=10.96.0.10" {
		t.Errorf("config: %s", got)
	}
	if o.SelfCheck || o.LogLevel != zapcore.DebugLevel {
		t.Errorf("self-check %v, log level %v; want false, debug", o.SelfCheck, o.LogLevel)
	}

	// No environment: the defaults of meshgate redirect, self-check on.
	o, err = parse(t, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(redirect.DefaultConfig().String(), o.Config.String()); diff != "" || !o.SelfCheck || o.LogLevel != zapcore.InfoLevel {
		t.Errorf("defaults: %s, self-check %v, level %v", diff, o.SelfCheck, o.LogLevel)
	}
	// A flag given on the command line wins even over a bad variable.
	if _, err := parse(t, []string{"--self-check=false", "--inbound-ports", "80"}, map[string]string{"MESHGATE_SELF_CHECK": "maybe", "MESHGATE_INBOUND_PORTS": "x"}); err != nil {
		t.Errorf("flags given, bad variables: %v", err)
	}
}

// TestFromEnvRefuses: a bad value names the variable it came from, or the
// flag; every problem at once.
func TestFromEnvRefuses(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"bad UID", nil, map[string]string{"MESHGATE_PROXY_UID": "envoy"},
			`MESHGATE_PROXY_UID "envoy": want a numeric UID like 1337, or none`},
		{"bad bool", nil, map[string]string{"MESHGATE_CAPTURE_DNS": "yes please"},
			`MESHGATE_CAPTURE_DNS "yes please": want true or false`},
		{"bad self-check", nil, map[string]string{"MESHGATE_SELF_CHECK": "maybe"},
			`MESHGATE_SELF_CHECK "maybe": want true or false`},
		{"bad log level", nil, map[string]string{"MESHGATE_LOG_LEVEL": "loud"},
			`MESHGATE_LOG_LEVEL "loud": want debug, info, warn or error`},
		{"bad flag", []string{"--log-level", "loud"}, nil,
			`--log-level "loud": want debug, info, warn or error`},
		{"a variable and a flag in one problem", []string{"--exclude-inbound-ports", "8080"}, map[string]string{"MESHGATE_INBOUND_PORTS": "8080"},
			`MESHGATE_INBOUND_PORTS and --exclude-inbound-ports both list 8080; remove it from one`},
		{"every problem at once", []string{"--mode", "nat"}, map[string]string{"MESHGATE_EXCLUDE_OUTBOUND_PORTS": "1-2", "MESHGATE_IPV6": "maybe", "MESHGATE_CAPTURE_DNS": "2"},
			strings.Join([]string{
				`MESHGATE_CAPTURE_DNS "2": want true or false`,
				`MESHGATE_EXCLUDE_OUTBOUND_PORTS "1-2": port ranges are not supported; list each port, like 8000,8001,8002`,
				`--mode "nat": want redirect or tproxy`,
				`MESHGATE_IPV6 "maybe": want auto, on or off`,
			}, "\n")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parse(t, tc.args, tc.env)
			if err == nil || err.Error() != tc.want {
				t.Errorf("error:\n got %v\nwant %s", err, tc.want)
			}
		})
	}
}

// TestReadmeDocumentsEveryFlag: README.md names every flag of meshgate
// init and its variable.
func TestReadmeDocumentsEveryFlag(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	fs := flag.NewFlagSet("meshgate init", flag.ContinueOnError)
	AddFlags(fs)
	fs.VisitAll(func(f *flag.Flag) {
		for _, s := range []string{"`--" + f.Name + "`", "`" + EnvName(f.Name) + "`"} {
			if !strings.Contains(string(readme), s) {
				t.Errorf("README.md does not mention %s", s)
			}
		}
	})
	if len(envNames(fs)) < 15 {
		t.Errorf("only %d flags: %v", len(envNames(fs)), envNames(fs))
	}
}
