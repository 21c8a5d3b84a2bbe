package jwtauth

import "time"

// SetMissWait shortens how long Verify waits for a refresh, for tests.
func SetMissWait(p *Provider, d time.Duration) { p.missWait = d }

// WaitRefresh waits for the refresh a Verify started, if one runs.
func WaitRefresh(p *Provider) { p.waitFlight() }
