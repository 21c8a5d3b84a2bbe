package demo

import (
	"context"
	"slices"
	"strings"
	"time"

	"meshgate/intercept"
	"meshgate/topology"
)

// readStats sums what a sidecar's metrics m say of one direction.
func readStats(m topology.Samples, dir string) Stats {
	get := func(name string) int64 { return int64(m[name+"{direction="+dir+"}"]) }
	s := Stats{
		Direction:     dir,
		Connections:   get("meshgate_tcp_connections_opened_total"),
		SentBytes:     get("meshgate_tcp_sent_bytes_total"),
		ReceivedBytes: get("meshgate_tcp_received_bytes_total"),
	}
	for k, v := range m {
		if !strings.Contains(k, "direction="+dir) {
			continue
		}
		switch {
		case strings.HasPrefix(k, "meshgate_mtls_plaintext_refused_total{"):
			s.PlaintextRefused += int64(v)
		case strings.HasPrefix(k, "meshgate_http_requests_total{"):
			s.HTTPRequests += int64(v)
		case strings.HasPrefix(k, "meshgate_tls_handshakes_total{"):
			s.addHandshakes(k, int64(v))
		}
	}
	slices.Sort(s.Peers)
	return s
}

// addHandshakes counts the handshakes of the sample k, and its peer if
// they succeeded.
func (s *Stats) addHandshakes(k string, v int64) {
	switch {
	case strings.Contains(k, "result=failed"):
		s.Failed += v
	case strings.Contains(k, "resumed=true"):
		s.Resumed += v
	default:
		s.Full += v
	}
	if _, rest, ok := strings.Cut(k, "peer_identity="); ok && strings.Contains(k, "result=ok") {
		id, _, _ := strings.Cut(rest, ",")
		id = strings.TrimSuffix(id, "}")
		name := id[strings.LastIndex(id, "/")+1:]
		if !slices.Contains(s.Peers, name) {
			s.Peers = append(s.Peers, name)
		}
	}
}

// settled waits until the sidecars' counters hold all the traffic sent:
// every connection client's app made has closed in its sidecar, so have
// the echo sessions in echo's, and web's has counted the outsider's
// plaintext refused. (web's inbound connections from client's sidecar stay
// open in its pool, so they are not waited for.)
func settled(ctx context.Context, client, echoPod, web *topology.Pod) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for _, w := range []struct {
		pod   *topology.Pod
		until func(topology.Samples) bool
	}{
		{client, func(m topology.Samples) bool { return m["meshgate_tcp_connections_active{direction=outbound}"] == 0 }},
		{echoPod, func(m topology.Samples) bool { return m["meshgate_tcp_connections_active{direction=inbound}"] == 0 }},
		{web, func(m topology.Samples) bool { return readStats(m, "inbound").PlaintextRefused > 0 }},
	} {
		if _, err := w.pod.WaitScrape(ctx, intercept.MetricsPort, w.until); err != nil {
			return err
		}
	}
	return nil
}
