package jwtauth

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"go.uber.org/zap"
)

const (
	// missWait caps how long a Verify waits for the refresh its unknown
	// kid started, whatever its ctx allows.
	missWait = 2 * time.Second
	// refreshTimeout bounds one refresh, whatever the HTTP client allows.
	refreshTimeout = 10 * time.Second
)

// Provider verifies the tokens of one issuer against its JWKS. It is
// safe for concurrent use. Run keeps its keys fresh; without Run, keys
// change only when a token's kid is unknown.
type Provider struct {
	opts     Options // defaults applied
	src      source
	log      *zap.Logger
	missWait time.Duration

	keys atomic.Pointer[keySet] // nil until the first good refresh

	refreshMu sync.Mutex // serializes refresh
	lastJWKS  []byte     // guarded by refreshMu: the document keys came from

	mu        sync.Mutex // guards the two below
	inflight  *flight    // the refresh started by Verify, if one runs
	lastStart time.Time  // when the last refresh started, by the Options.Now clock
}

// flight is one refresh started by Verify, which concurrent Verify calls
// share.
type flight struct {
	done chan struct{}
}

// New checks o and returns its provider. With JWKSFile it reads the keys
// now; with JWKSURL it does not fetch: the first Verify or Run does.
func New(o Options) (*Provider, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	o = o.withDefaults()
	p := &Provider{
		opts:     o,
		log:      o.Log.With(zap.String("jwt_provider", o.Name)),
		missWait: missWait,
	}
	if o.JWKSURL != "" {
		u, _ := url.Parse(o.JWKSURL) // checked by validate
		p.src = urlSource{url: u, client: o.HTTPClient}
		return p, nil
	}
	p.src = fileSource{path: o.JWKSFile}
	p.lastStart = o.Now()
	data, err := p.src.fetch(context.Background())
	if err != nil {
		return nil, fmt.Errorf("jwksFile: %w", err)
	}
	keys, ignored, err := parseJWKS(data)
	if err != nil {
		return nil, fmt.Errorf("jwksFile: %s: %w", o.JWKSFile, err)
	}
	p.logIgnored(ignored)
	p.lastJWKS = data
	ks, _, _, _ := merge(nil, keys, o.Now(), o.KeyRetention)
	p.keys.Store(ks)
	return p, nil
}

// Name is Options.Name.
func (p *Provider) Name() string { return p.opts.Name }

// Issuer is Options.Issuer.
func (p *Provider) Issuer() string { return p.opts.Issuer }

// Run refreshes the keys every RefreshInterval until ctx is done: a file
// is re-read, a URL re-fetched (once at the start, too). A refresh that
// fails keeps the keys there were, and is logged; the next tick (or an
// unknown kid) tries again. Run blocks; the caller owns its goroutine. It
// returns once ctx is done and no refresh it or Verify started runs.
func (p *Provider) Run(ctx context.Context) {
	defer p.waitFlight()
	if _, ok := p.src.(urlSource); ok {
		p.runRefresh(ctx)
	}
	t := time.NewTicker(p.opts.RefreshInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			p.runRefresh(ctx)
		}
	}
}

func (p *Provider) runRefresh(ctx context.Context) {
	p.mu.Lock()
	p.lastStart = p.opts.Now()
	p.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, refreshTimeout)
	defer cancel()
	p.refresh(ctx, "tick")
}

// waitFlight waits for the refresh Verify started, if one runs.
func (p *Provider) waitFlight() {
	p.mu.Lock()
	f := p.inflight
	p.mu.Unlock()
	if f != nil {
		<-f.done
	}
}

// refresh reads the JWKS and installs its keys, merged with the ones
// there were (see merge). It is the one place that changes the keys, and
// it logs what it did: on failure the old keys stay and Verify says only
// that it has none or lacks a kid, so the details are here.
func (p *Provider) refresh(ctx context.Context, why string) {
	p.refreshMu.Lock()
	defer p.refreshMu.Unlock()
	log := p.log.With(zap.String("jwks", p.src.String()), zap.String("trigger", why))
	old := p.keys.Load()
	data, err := p.src.fetch(ctx)
	if err != nil {
		log.Warn("jwks refresh failed; keeping the keys there were", zap.Error(err), zap.Int("keys", p.countLive(old)))
		return
	}
	var fresh []*key
	if old != nil && bytes.Equal(data, p.lastJWKS) {
		// Unchanged: only retention deadlines may have passed.
		for _, k := range old.keys {
			if k.retainUntil.IsZero() {
				fresh = append(fresh, k)
			}
		}
	} else {
		var ignored []ignoredKey
		fresh, ignored, err = parseJWKS(data)
		p.logIgnored(ignored)
		if err != nil {
			log.Warn("jwks refresh failed; keeping the keys there were", zap.Error(err), zap.Int("keys", p.countLive(old)))
			return
		}
		p.lastJWKS = data
	}
	next, added, retained, dropped := merge(old, fresh, p.opts.Now(), p.opts.KeyRetention)
	p.keys.Store(next)
	lvl := zap.DebugLevel
	if added+retained+dropped > 0 {
		lvl = zap.InfoLevel
	}
	if ce := log.Check(lvl, "jwks refreshed"); ce != nil {
		ce.Write(zap.Int("keys", len(next.keys)), zap.Int("added", added),
			zap.Int("retained", retained), zap.Int("dropped", dropped))
	}
}

func (p *Provider) countLive(ks *keySet) int {
	if ks == nil {
		return 0
	}
	n, now := 0, p.opts.Now()
	for _, k := range ks.keys {
		if k.live(now) {
			n++
		}
	}
	return n
}

// logIgnored logs, once per refresh, the JWKS entries left out.
func (p *Provider) logIgnored(ignored []ignoredKey) {
	if len(ignored) == 0 {
		return
	}
	s := make([]string, len(ignored))
	for i, ik := range ignored {
		s[i] = ik.String()
	}
	p.log.Warn("jwks entries ignored", zap.String("jwks", p.src.String()), zap.Strings("ignored", s))
}

// refreshForMiss starts a refresh for a Verify that lacks a key, unless
// one runs (then it joins it) or the last one started less than
// MinRefreshInterval ago. It waits for the refresh, at most missWait and
// while ctx lasts, and reports whether the refresh finished.
func (p *Provider) refreshForMiss(ctx context.Context) bool {
	p.mu.Lock()
	f := p.inflight
	if f == nil {
		now := p.opts.Now()
		if !p.lastStart.IsZero() && now.Sub(p.lastStart) < p.opts.MinRefreshInterval {
			p.mu.Unlock()
			return false
		}
		p.lastStart = now
		f = &flight{done: make(chan struct{})}
		p.inflight = f
		// The refresh outlives an impatient caller, so it gets a context of
		// its own, bounded by refreshTimeout; Run waits for it.
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), refreshTimeout)
		go func() {
			defer cancel()
			p.refresh(fctx, "key-miss")
			p.mu.Lock()
			p.inflight = nil
			p.mu.Unlock()
			close(f.done)
		}()
	}
	p.mu.Unlock()
	t := time.NewTimer(p.missWait)
	defer t.Stop()
	select {
	case <-f.done:
		return true
	case <-ctx.Done():
	case <-t.C:
	}
	return false
}

// Verify checks a compact JWS token: its alg, its signature against the
// provider's keys, then its registered claims. A token without "exp" is
// accepted, as Envoy's jwt_authn does: the issuer chose a token that does
// not expire; policies that need expiry can require the claim. Errors are
// *Error.
func (p *Provider) Verify(ctx context.Context, tok string) (*Claims, error) {
	t, err := parse(tok)
	if err != nil {
		return nil, err
	}
	c, err := p.verify(ctx, t)
	if err != nil {
		return nil, err
	}
	return c, nil
}

func (p *Provider) verify(ctx context.Context, t *token) (*Claims, *Error) {
	cands, err := p.candidates(t)
	if err != nil && (err.Reason == ReasonUnknownKid || err.Reason == ReasonNoKeys) {
		if p.refreshForMiss(ctx) {
			cands, err = p.candidates(t)
		}
	}
	if err != nil {
		return nil, err
	}
	verified := false
	for _, k := range cands {
		// t.claims were decoded from the very payload bytes verified here.
		verr := t.jws.DetachedVerify(t.claims.Payload, k.pub)
		if verr == nil {
			verified = true
			break
		}
		if !errors.Is(verr, jose.ErrCryptoFailure) {
			return nil, refuse(ReasonMalformed, "token header cannot be verified (unsupported \"crit\" parameter?)")
		}
	}
	if !verified {
		if t.kid != "" {
			return nil, refuse(ReasonBadSignature, "signature does not verify with key %s of provider %q", quote(t.kid), p.opts.Name)
		}
		return nil, refuse(ReasonBadSignature, "signature does not verify with any of the %d %s keys of provider %q", len(cands), t.alg, p.opts.Name)
	}
	if err := p.checkClaims(t.claims); err != nil {
		return nil, err
	}
	return t.claims, nil
}

// candidates returns the live keys that may have signed t: those with its
// kid (any, if it has none) whose type and own alg fit its alg.
func (p *Provider) candidates(t *token) ([]*key, *Error) {
	ks := p.keys.Load()
	now := p.opts.Now()
	var live []*key
	if ks != nil {
		for _, k := range ks.keys {
			if k.live(now) {
				live = append(live, k)
			}
		}
	}
	if len(live) == 0 {
		return nil, refuse(ReasonNoKeys, "provider %q has no keys to verify with (its JWKS could not be read)", p.opts.Name)
	}
	var cands []*key
	var misfit string
	for _, k := range live {
		if t.kid != "" && k.kid != t.kid {
			continue
		}
		why := fits(t.alg, k.pub)
		if why == "" && k.alg != "" && k.alg != t.alg {
			why = "the key is for " + k.alg
		}
		if why != "" {
			if misfit == "" {
				misfit = why
			}
			continue
		}
		cands = append(cands, k)
	}
	switch {
	case len(cands) > 0:
		return cands, nil
	case t.kid != "" && misfit != "":
		return nil, refuse(ReasonAlgRefused, "token alg %s does not fit key %s of provider %q: %s", t.alg, quote(t.kid), p.opts.Name, misfit)
	case t.kid != "":
		return nil, refuse(ReasonUnknownKid, "provider %q has no key with kid %s", p.opts.Name, quote(t.kid))
	default:
		return nil, refuse(ReasonAlgRefused, "token has no kid and provider %q has no key for alg %s", p.opts.Name, t.alg)
	}
}

// checkClaims checks the registered claims of a token whose signature
// verified (RFC 7519 §4.1).
func (p *Provider) checkClaims(c *Claims) *Error {
	if c.Issuer != p.opts.Issuer {
		return refuse(ReasonWrongIssuer, "token issuer %s, want %q", quote(c.Issuer), p.opts.Issuer)
	}
	if len(p.opts.Audiences) > 0 && !slices.ContainsFunc(c.Audience, func(a string) bool {
		return slices.Contains(p.opts.Audiences, a)
	}) {
		return refuse(ReasonWrongAudience, "token audience %s has none of %s", quoteList(c.Audience), quoteList(p.opts.Audiences))
	}
	now := p.opts.Now()
	skew := p.opts.ClockSkew
	if !c.Expiry.IsZero() && !now.Before(c.Expiry.Add(skew)) {
		return refuse(ReasonExpired, "token expired at %s (clock skew %v)", c.Expiry.Format(time.RFC3339), skew)
	}
	if !c.NotBefore.IsZero() && now.Add(skew).Before(c.NotBefore) {
		return refuse(ReasonNotYetValid, "token not valid before %s (clock skew %v)", c.NotBefore.Format(time.RFC3339), skew)
	}
	if !c.IssuedAt.IsZero() && now.Add(skew).Before(c.IssuedAt) {
		return refuse(ReasonIssuedInFuture, "token issued at %s, in the future (clock skew %v)", c.IssuedAt.Format(time.RFC3339), skew)
	}
	return nil
}

// quoteList renders a list of audiences for an Error: at most four, each
// quoted and cut short.
func quoteList(l []string) string {
	const max = 4
	s := make([]string, 0, max+1)
	for i, v := range l {
		if i == max {
			s = append(s, fmt.Sprintf("and %d more", len(l)-max))
			break
		}
		s = append(s, quote(v))
	}
	return "[" + strings.Join(s, " ") + "]"
}
