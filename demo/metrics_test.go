package demo

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"meshgate/topology"
)

// TestReadStats: a sidecar's samples are summed per direction, and only
// peers of successful handshakes are named.
func TestReadStats(t *testing.T) {
	m := topology.Samples{
		"meshgate_tcp_connections_opened_total{direction=inbound}":                                                                     12,
		"meshgate_tcp_sent_bytes_total{direction=inbound}":                                                                             2048,
		"meshgate_tcp_received_bytes_total{direction=inbound}":                                                                         100,
		"meshgate_tcp_connections_opened_total{direction=outbound}":                                                                    3,
		"meshgate_http_requests_total{code=200,direction=inbound}":                                                                     9,
		"meshgate_http_requests_total{code=503,direction=inbound}":                                                                     1,
		"meshgate_mtls_plaintext_refused_total{direction=inbound}":                                                                     1,
		"meshgate_tls_handshakes_total{direction=inbound,peer_identity=spiffe://demo.local/ns/demo/sa/client,result=ok,resumed=false}": 2,
		"meshgate_tls_handshakes_total{direction=inbound,peer_identity=spiffe://demo.local/ns/demo/sa/client,result=ok,resumed=true}":  5,
		"meshgate_tls_handshakes_total{direction=inbound,peer_identity=spiffe://demo.local/ns/demo/sa/admin,result=ok,resumed=false}":  1,
		"meshgate_tls_handshakes_total{direction=inbound,peer_identity=spiffe://other.example/ns/x/sa/bad,result=failed}":              4,
		"meshgate_tls_handshakes_total{direction=outbound,peer_identity=spiffe://demo.local/ns/demo/sa/web,result=ok,resumed=false}":   3,
	}
	want := Stats{Direction: "inbound", Connections: 12, HTTPRequests: 10, SentBytes: 2048, ReceivedBytes: 100,
		Full: 3, Resumed: 5, Failed: 4, PlaintextRefused: 1, Peers: []string{"admin", "client"}}
	if diff := cmp.Diff(want, readStats(m, "inbound")); diff != "" {
		t.Errorf("inbound (-want +got):\n%s", diff)
	}
	want = Stats{Direction: "outbound", Connections: 3, Full: 3, Peers: []string{"web"}}
	if diff := cmp.Diff(want, readStats(m, "outbound")); diff != "" {
		t.Errorf("outbound (-want +got):\n%s", diff)
	}
}
