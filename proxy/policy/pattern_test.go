package policy

import "testing"

// TestExportedMatchers: the exported matchers and checks mean what the
// rules' own do, and their zero values match nothing.
func TestExportedMatchers(t *testing.T) {
	p := CompilePatterns([]string{"/login", "/api/*", "/users/*/orders"})
	for s, want := range map[string]bool{
		"/login": true, "/login/x": false, "/api/": true, "/api/a/b": true, "/api": false,
		"/users/7/orders": true, "/users/7/8/orders": false, "/users//orders": false,
	} {
		if got := p.Match(s); got != want {
			t.Errorf("paths Match(%q) = %v, want %v", s, got, want)
		}
	}
	id := CompilePatterns([]string{"spiffe://td/ns/shop/*"})
	if !id.Match("spiffe://td/ns/shop/sa/web") || id.Match("spiffe://td/ns/other/sa/web") {
		t.Error("identity patterns")
	}
	h := CompileHosts([]string{"api.shop.mesh", "*.example.com"})
	for s, want := range map[string]bool{
		"api.shop.mesh": true, "API.shop.mesh.": true, "api.shop.mesh:8080": true,
		"a.example.com": true, "example.com": false, "shop.mesh": false,
	} {
		if got := h.Match(s); got != want {
			t.Errorf("hosts Match(%q) = %v, want %v", s, got, want)
		}
	}
	if (Patterns{}).Match("/") || (Hosts{}).Match("x") {
		t.Error("a zero matcher matched")
	}
	for _, tc := range []struct {
		err  error
		want string
	}{
		{CheckPath("/a*b"), `"/a*b" has a * inside a segment: * stands for a whole segment, or ends a prefix; want e.g. /api/items, /api/* or /users/*/orders`},
		{CheckPath("api"), `"api" does not start with /; want e.g. /api/items, /api/* or /users/*/orders`},
		{CheckHost("Api.x"), `"Api.x": write host names in lower case`},
		{CheckHost("a:80"), `"a:80" is not a host name; want e.g. api.example.com or *.example.com (no port, no scheme)`},
		{CheckIdentity("td/ns/a"), `"td/ns/a" is not a SPIFFE ID pattern; want e.g. spiffe://cluster.local/ns/shop/sa/web, spiffe://cluster.local/ns/shop/* or *`},
	} {
		if tc.err == nil || tc.err.Error() != tc.want {
			t.Errorf("got %v\nwant %s", tc.err, tc.want)
		}
	}
	for _, err := range []error{CheckPath("/api/*"), CheckPath("*"), CheckHost("*.example.com"), CheckIdentity("*"), CheckIdentity("spiffe://td/ns/a/sa/b")} {
		if err != nil {
			t.Errorf("refused: %v", err)
		}
	}
}
