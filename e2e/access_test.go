package e2e

import (
	"errors"
	"fmt"
	"net/http"
	neturl "net/url"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"meshgate/intercept"
)

// TestAccessLists: the api sidecar's IP lists and header block (issue
// 15), against real pods and curl: the caller its deny list names is
// refused at connect, the reason in the sidecar's log and metric, the app
// seeing nothing; curl's User-Agent is answered 403 "block: no-curl"
// while a browser's passes; a pod its allow list (a file) lacks is
// refused by default, until the file is rewritten with its address,
// which the running sidecar picks up with no restart.
func TestAccessLists(t *testing.T) {
	needRoot(t)
	_, pods := newLabWith(t, "blocked", "partner", "late", "api")
	blocked, partner, late, api := pods[0], pods[1], pods[2], pods[3]
	app := startRecordingApp(t, api, 8080, nil)

	dir := publicTempDir(t)
	partners := filepath.Join(dir, "partners.txt")
	writeAtomic(t, partners, []byte("# partners, one address or CIDR a line\n"+partner.IPv4.String()+"\n"+blocked.IPv4.String()+"\n"))
	config := fmt.Sprintf(`access:
  ipLists:
  - {name: blocked-callers, action: deny, cidrs: [%s/32]}
  - {name: partners, action: allow, files: [%s]}
  headerBlocks:
  - {name: no-curl, header: User-Agent, pattern: "(?i)^curl/"}
`, blocked.IPv4, partners)
	sapi := enroll(t, api, enrollOpts{proxyConfig: config})
	target := url(api.IPv4, 8080, "/items")
	browser := []string{"-A", "Mozilla/5.0 (X11; Linux x86_64)"}
	pid := sapi.proc.Cmd.Process.Pid

	t.Run("deny list", func(t *testing.T) {
		before := app.count()
		out, err := blocked.Run(ctxFor(t, 30*time.Second), append([]string{"curl", "-sS", "--max-time", "10"}, append(browser, target)...)...)
		// Reset as soon as it is accepted: curl sees it while connecting
		// (exit 7) or reading (56).
		if err == nil || !strings.Contains(err.Error(), "exit status 7") && !strings.Contains(err.Error(), "exit status 56") {
			t.Errorf("blocked's curl: %v %q; want the connection refused or reset", err, out)
		}
		if n := app.count() - before; n != 0 {
			t.Errorf("the app saw %d requests from the denied caller", n)
		}
		eventually(t, 5*time.Second, func() error {
			l := sapi.logs("connection refused", "reason", "ip-list: blocked-callers", "list", "blocked-callers")
			if len(l) == 0 || !strings.HasPrefix(l[0]["src"].(string), blocked.IPv4.String()+":") || l[0]["level"] != "warn" {
				return fmt.Errorf("the api sidecar logged no warn \"connection refused\" naming blocked-callers and %s: %v", blocked.IPv4, l)
			}
			return nil
		})
		checkDenials(t, sapi, "ip-list", "blocked-callers", 1)
	})

	t.Run("User-Agent block", func(t *testing.T) {
		before := app.count()
		r := curlReply(t, partner, target)
		if r.status != http.StatusForbidden || r.header.Get("X-Meshgate-Error") != "block: no-curl" {
			t.Errorf("partner's curl: %v; want 403 with X-Meshgate-Error \"block: no-curl\"", r)
		}
		if n := app.count() - before; n != 0 {
			t.Errorf("the app saw %d requests for a blocked one", n)
		}
		if r := curlReply(t, partner, append(browser, target)...); r.status != http.StatusOK || r.body != "ok" {
			t.Errorf("partner as a browser: %v; want 200 from the app", r)
		}
		sapi.waitOutput(t, `"reason":"block: no-curl: header User-Agent matches \"(?i)^curl/\""`, "the api sidecar's access log does not name no-curl")
		checkDenials(t, sapi, "block", "no-curl", 1)
	})

	t.Run("explain", func(t *testing.T) {
		file := filepath.Join(dir, "proxy.yaml")
		writeAtomic(t, file, []byte(config))
		for _, tc := range []struct {
			args  []string
			query neturl.Values
			want  string
		}{
			{[]string{"--port", "8080", "--source-ip", blocked.IPv4.String()},
				neturl.Values{"port": {"8080"}, "source-ip": {blocked.IPv4.String()}},
				"ip lists: DENY: source " + blocked.IPv4.String() + " is in deny list blocked-callers (access.ipLists[0]); the connection is closed at once\n"},
			{[]string{"--port", "8080", "--source-ip", partner.IPv4.String(), "--header", "User-Agent=curl/8.1"},
				neturl.Values{"port": {"8080"}, "source-ip": {partner.IPv4.String()}, "header": {"User-Agent:curl/8.1"}},
				"block:    DENY by no-curl: header User-Agent \"curl/8.1\" matches \"(?i)^curl/\"; answered 403\n"},
		} {
			out, err := meshgate(t, append([]string{"policy", "explain", "--config", file}, tc.args...)...)
			if ee := (*exec.ExitError)(nil); !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(out, tc.want) {
				t.Errorf("meshgate policy explain %s: %v; want exit status 1 and %q in:\n%s", strings.Join(tc.args, " "), err, tc.want, out)
			}
			code, body, err := podGet(api, fmt.Sprintf("http://127.0.0.1:%d/explain?%s", intercept.AdminPort, tc.query.Encode()))
			if err != nil || code != http.StatusOK || body != out {
				t.Errorf("the sidecar's /explain?%s: %d %v; want 200 with what meshgate policy explain says:\n%s\nit says:\n%s", tc.query.Encode(), code, err, out, body)
			}
		}
	})

	t.Run("allow-list file change", func(t *testing.T) {
		out, err := late.Run(ctxFor(t, 30*time.Second), append([]string{"curl", "-sS", "--max-time", "10"}, append(browser, target)...)...)
		if err == nil {
			t.Fatalf("late's curl before the list has it: %q; want the connection refused", out)
		}
		checkDenials(t, sapi, "ip-list", "default", 1)
		writeAtomic(t, partners, []byte(partner.IPv4.String()+"\n"+late.IPv4.String()+"/32 # added\n"))
		eventually(t, 10*time.Second, func() error {
			out, err := late.Run(ctxFor(t, 30*time.Second), append([]string{"curl", "-sS", "--max-time", "10"}, append(browser, target)...)...)
			if err != nil || out != "ok" {
				return fmt.Errorf("late's curl after the file has its address: %v %q", err, out)
			}
			return nil
		})
		eventually(t, 5*time.Second, func() error {
			if l := sapi.logs("ip list file reloaded", "file", partners); len(l) == 0 || l[0]["entries"] != 2.0 {
				return fmt.Errorf("the sidecar logged no \"ip list file reloaded\" with 2 entries: %v", l)
			}
			return nil
		})
		if sapi.proc.Exited() || sapi.proc.Cmd.Process.Pid != pid {
			t.Error("the sidecar restarted")
		}
	})
}

// checkDenials waits until the sidecar's meshgate_access_denials_total
// for inbound stage and rule is want.
func checkDenials(t *testing.T, s *sidecar, stage, rule string, want float64) {
	t.Helper()
	key := fmt.Sprintf("meshgate_access_denials_total{direction=inbound,rule=%s,stage=%s}", rule, stage)
	eventually(t, 5*time.Second, func() error {
		if got := s.metrics(t)[key]; got != want {
			return fmt.Errorf("%s = %v, want %v", key, got, want)
		}
		return nil
	})
}
