package enroll

import (
	"strings"
	"testing"

	"meshgate/intercept"
	"meshgate/proxy"
	"meshgate/redirect"
)

func TestAgree(t *testing.T) {
	tests := []struct {
		name  string
		rules func(*redirect.Config)
		cfg   func(*proxy.Config)
		want  []string // substrings of the error; none: they agree
	}{
		{name: "defaults"},
		{name: "both tproxy",
			rules: func(r *redirect.Config) { r.Mode = intercept.ModeTProxy },
			cfg:   func(c *proxy.Config) { c.Mode = intercept.ModeTProxy }},
		{name: "tproxy rules, redirect sidecar",
			rules: func(r *redirect.Config) { r.Mode = intercept.ModeTProxy },
			want:  []string{"--mode tproxy: the sidecar's config says mode: redirect; set mode: tproxy in --config"}},
		{name: "sidecar on other ports",
			cfg:  func(c *proxy.Config) { c.Inbound.Port = 16006; c.Outbound.Port = 16001 },
			want: []string{"inbound.port 16006: the rules send inbound connections to 15006", "outbound.port 16001: the rules send outbound connections to 15001"}},
		{name: "mark only, sidecar marks otherwise",
			rules: func(r *redirect.Config) { r.ProxyUID = nil },
			cfg:   func(c *proxy.Config) { c.Mark = 0x540 },
			want:  []string{"--proxy-mark 0x539: the only exemption, but the sidecar's config marks its sockets with mark: 0x540"}},
		{name: "mark differs, UID exempts",
			cfg: func(c *proxy.Config) { c.Mark = 0x540 }},
		{name: "no mark exemption, UID only",
			rules: func(r *redirect.Config) { r.ProxyMark = 0 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rules, cfg := redirect.DefaultConfig(), proxy.DefaultConfig()
			if tt.rules != nil {
				tt.rules(&rules)
			}
			if tt.cfg != nil {
				tt.cfg(&cfg)
			}
			err := Agree(rules, cfg)
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Agree: %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Agree: nil, want %q", tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Agree: %v\nwant it to say %q", err, w)
				}
			}
		})
	}
}
