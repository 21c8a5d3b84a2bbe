package mtls

import (
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestWorkloadID(t *testing.T) {
	for _, tc := range []struct {
		name     string
		td       spiffeid.TrustDomain
		ns, sa   string
		want     string
		wantFail string
	}{
		{name: "kubernetes names", td: tdA, ns: "default", sa: "web", want: "spiffe://a.example/ns/default/sa/web"},
		{name: "dots and dashes", td: tdA, ns: "kube-system", sa: "coredns.v1_2", want: "spiffe://a.example/ns/kube-system/sa/coredns.v1_2"},
		{name: "no trust domain", ns: "default", sa: "web", wantFail: "mtls: workload ID: empty trust domain"},
		{name: "empty namespace", td: tdA, sa: "web", wantFail: `mtls: workload ID: namespace "": path cannot contain empty segments`},
		{name: "slash in namespace", td: tdA, ns: "a/b", sa: "web",
			wantFail: `mtls: workload ID: namespace "a/b": path segment characters are limited to letters, numbers, dots, dashes, and underscores`},
		{name: "dot-dot service account", td: tdA, ns: "default", sa: "..", wantFail: `mtls: workload ID: service account "..": path cannot contain dot segments`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, err := WorkloadID(tc.td, tc.ns, tc.sa)
			if tc.wantFail != "" {
				if errText(err) != tc.wantFail {
					t.Fatalf("error\n got %v\nwant %s", err, tc.wantFail)
				}
				return
			}
			if err != nil || id.String() != tc.want {
				t.Fatalf("WorkloadID = %v, %v; want %s", id, err, tc.want)
			}
		})
	}
}

func TestParseWorkloadID(t *testing.T) {
	for _, tc := range []struct {
		in       string
		ns, sa   string
		wantFail string
	}{
		{in: "spiffe://a.example/ns/default/sa/web", ns: "default", sa: "web"},
		{in: "spiffe://cluster.local/ns/kube-system/sa/coredns", ns: "kube-system", sa: "coredns"},
		{in: "spiffe://a.example/ns/default/sa/web/extra",
			wantFail: `mtls: "spiffe://a.example/ns/default/sa/web/extra": not a workload ID; want spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`},
		{in: "spiffe://a.example/sa/web/ns/default",
			wantFail: `mtls: "spiffe://a.example/sa/web/ns/default": not a workload ID; want spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`},
		{in: "spiffe://a.example",
			wantFail: `mtls: "spiffe://a.example": not a workload ID; want spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`},
		{in: "spiffe://A.example/ns/default/sa/web",
			wantFail: `mtls: "spiffe://A.example/ns/default/sa/web": not a SPIFFE ID (trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores); want spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`},
		{in: "https://a.example/ns/default/sa/web",
			wantFail: `mtls: "https://a.example/ns/default/sa/web": not a SPIFFE ID (scheme is missing or invalid); want spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`},
		{in: "spiffe://a.example/ns//sa/web",
			wantFail: `mtls: "spiffe://a.example/ns//sa/web": not a SPIFFE ID (path cannot contain empty segments); want spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`},
		{in: "", wantFail: `mtls: "": not a SPIFFE ID (cannot be empty); want spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`},
	} {
		t.Run(tc.in, func(t *testing.T) {
			w, err := ParseWorkloadID(tc.in)
			if tc.wantFail != "" {
				if errText(err) != tc.wantFail {
					t.Fatalf("error\n got %v\nwant %s", err, tc.wantFail)
				}
				return
			}
			if err != nil || w.Namespace != tc.ns || w.ServiceAccount != tc.sa || w.String() != tc.in {
				t.Fatalf("ParseWorkloadID = %+v, %v; want ns %s, sa %s", w, err, tc.ns, tc.sa)
			}
		})
	}
}

// FuzzParseWorkloadID: parsing never panics, and whatever parses is built
// back, by WorkloadID, into the same string.
func FuzzParseWorkloadID(f *testing.F) {
	for _, s := range []string{
		"spiffe://a.example/ns/default/sa/web",
		"spiffe://a.example/ns/default/sa/web/x",
		"spiffe://a.example/ns/../sa/web",
		"spiffe://a.example:8443/ns/default/sa/web",
		"spiffe://user@a.example/ns/a/sa/b",
		"spiffe://a.example/ns/a/sa/b?q=1#f",
		"spiffe://a.example/ns/%2F/sa/b",
		"spiffe:///ns/a/sa/b",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		w, err := ParseWorkloadID(s)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "mtls: ") {
				t.Fatalf("error without the package prefix: %v", err)
			}
			return
		}
		id, err := WorkloadID(w.ID.TrustDomain(), w.Namespace, w.ServiceAccount)
		if err != nil {
			t.Fatalf("%q parsed into %+v, which WorkloadID refuses: %v", s, w, err)
		}
		if id.String() != s || id != w.ID {
			t.Fatalf("%q parsed into %+v, rebuilt as %s", s, w, id)
		}
	})
}
