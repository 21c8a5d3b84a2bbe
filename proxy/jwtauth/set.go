package jwtauth

import (
	"context"
	"fmt"
	"sync"
)

// Set is the providers of one proxy, chosen for a token by its "iss".
type Set struct {
	byIssuer map[string]*Provider
	all      []*Provider
}

// NewSet returns the set of ps. Two providers may not share an issuer: the
// unverified "iss" is all that picks one.
func NewSet(ps ...*Provider) (*Set, error) {
	s := &Set{byIssuer: make(map[string]*Provider, len(ps))}
	for i, p := range ps {
		if p == nil {
			return nil, fmt.Errorf("jwtauth: provider %d is nil", i)
		}
		if q, dup := s.byIssuer[p.Issuer()]; dup {
			return nil, fmt.Errorf("jwtauth: providers %q and %q share issuer %q", q.Name(), p.Name(), p.Issuer())
		}
		s.byIssuer[p.Issuer()] = p
		s.all = append(s.all, p)
	}
	return s, nil
}

// Verify verifies token with the provider of its issuer, and returns
// that provider too (also with an error, when one was chosen). The "iss"
// read to choose it is not trusted: the provider checks it again once
// the signature verified. Errors are *Error.
func (s *Set) Verify(ctx context.Context, token string) (*Claims, *Provider, error) {
	t, err := parse(token)
	if err != nil {
		return nil, nil, err
	}
	if _, has := t.claims.Raw["iss"]; !has {
		return nil, nil, refuse(ReasonUnknownIssuer, "token has no \"iss\" claim")
	}
	p := s.byIssuer[t.claims.Issuer]
	if p == nil {
		return nil, nil, refuse(ReasonUnknownIssuer, "no provider for issuer %s", quote(t.claims.Issuer))
	}
	c, err := p.verify(ctx, t)
	if err != nil {
		return nil, p, err
	}
	return c, p, nil
}

// Run runs every provider's Run and returns once all have returned.
func (s *Set) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, p := range s.all {
		wg.Go(func() { p.Run(ctx) })
	}
	wg.Wait()
}
