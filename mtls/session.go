package mtls

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"sync/atomic"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Session resumption and trust changes.
//
// A resumed TLS 1.3 session carries the peer's certificates from the full
// handshake that began it, and VerifyConnection checks them again against
// the current bundle. So when a root leaves the bundle (the last step of a
// root rotation), a session begun under that root would fail to resume:
// one refused connection per cached session, though a full handshake with
// the peer's current certificate would succeed. To make a root rotation
// fail no connection, each session is marked, when it is stored, with a
// fingerprint of the trust bundle it was verified under; a session whose
// bundle has changed since is not offered (client) or not accepted
// (server), and a full handshake happens instead. The mark rides in
// tls.SessionState.Extra, which crypto/tls keeps for this purpose.

// trustMarkPrefix starts our entry in SessionState.Extra; other layers may
// add entries of their own.
var trustMarkPrefix = []byte("meshgate/trust/1 ")

// trustMarks makes and checks session marks against the current bundles.
type trustMarks struct {
	bundles x509bundle.Source
	// last memoizes the fingerprint of the most recent bundle, so a
	// steady state hashes nothing per handshake.
	last atomic.Pointer[fingerprint]
}

type fingerprint struct {
	bundle *x509bundle.Bundle
	sum    [sha256.Size]byte
}

func (m *trustMarks) sum(b *x509bundle.Bundle) [sha256.Size]byte {
	if f := m.last.Load(); f != nil && f.bundle == b {
		return f.sum
	}
	h := sha256.New()
	for _, a := range b.X509Authorities() {
		h.Write(a.Raw)
	}
	f := &fingerprint{bundle: b}
	h.Sum(f.sum[:0])
	m.last.Store(f)
	return f.sum
}

// mark returns the Extra entry for a session verified under td's current
// bundle.
func (m *trustMarks) mark(td spiffeid.TrustDomain) ([]byte, bool) {
	b, err := m.bundles.GetX509BundleForTrustDomain(td)
	if err != nil {
		return nil, false
	}
	sum := m.sum(b)
	e := append(append(append([]byte(nil), trustMarkPrefix...), td.Name()...), ' ')
	return append(e, sum[:]...), true
}

// unchanged says whether the session with these Extra entries was marked
// under the bundle its trust domain has now. An unmarked session is
// treated as changed.
func (m *trustMarks) unchanged(extra [][]byte) bool {
	for _, e := range extra {
		rest, ok := bytes.CutPrefix(e, trustMarkPrefix)
		if !ok || len(rest) < sha256.Size+1 {
			continue
		}
		name, sum := rest[:len(rest)-sha256.Size-1], rest[len(rest)-sha256.Size:]
		td, err := spiffeid.TrustDomainFromString(string(name))
		if err != nil {
			return false
		}
		b, err := m.bundles.GetX509BundleForTrustDomain(td)
		if err != nil {
			return false
		}
		now := m.sum(b)
		return bytes.Equal(now[:], sum)
	}
	return false
}

// serverSessions marks the tickets cfg issues with the client's trust
// domain bundle, and declines tickets whose bundle has changed.
func serverSessions(cfg *tls.Config, marks *trustMarks) {
	cfg.WrapSession = func(cs tls.ConnectionState, ss *tls.SessionState) ([]byte, error) {
		if len(cs.PeerCertificates) > 0 {
			if id, err := x509svid.IDFromCert(cs.PeerCertificates[0]); err == nil {
				if mark, ok := marks.mark(id.TrustDomain()); ok {
					ss.Extra = append(ss.Extra, mark)
				}
			}
		}
		return cfg.EncryptTicket(cs, ss)
	}
	cfg.UnwrapSession = func(identity []byte, cs tls.ConnectionState) (*tls.SessionState, error) {
		ss, err := cfg.DecryptTicket(identity, cs)
		if err != nil || ss == nil {
			return ss, err
		}
		if !marks.unchanged(ss.Extra) {
			return nil, nil // not an error: crypto/tls does a full handshake
		}
		return ss, nil
	}
}

// clientSessions is a ClientSessionCache that marks each session with the
// bundle of our own trust domain (the peer's is not known when the
// session is stored; in a mesh it is almost always the same), and drops
// sessions whose bundle has changed.
type clientSessions struct {
	inner tls.ClientSessionCache
	svid  x509svid.Source
	marks *trustMarks
}

func (c *clientSessions) Put(key string, cs *tls.ClientSessionState) {
	if _, ss, err := cs.ResumptionState(); err == nil && ss != nil {
		if svid, err := c.svid.GetX509SVID(); err == nil && svid != nil {
			if mark, ok := c.marks.mark(svid.ID.TrustDomain()); ok {
				ss.Extra = append(ss.Extra, mark)
			}
		}
	}
	c.inner.Put(key, cs)
}

func (c *clientSessions) Get(key string) (*tls.ClientSessionState, bool) {
	cs, ok := c.inner.Get(key)
	if !ok || cs == nil {
		return cs, ok
	}
	if _, ss, err := cs.ResumptionState(); err != nil || ss == nil || !c.marks.unchanged(ss.Extra) {
		c.inner.Put(key, nil)
		return nil, false
	}
	return cs, true
}
