package resilience

import (
	"fmt"
	"sync"
	"time"
)

// State is a circuit breaker's state. Its value is the one a gauge
// shows: 0 closed, 1 open, 2 half-open.
type State uint8

// The states of a Breaker.
const (
	// Closed lets requests through and counts their outcomes.
	Closed State = 0
	// Open refuses every request, until OpenFor has passed.
	Open State = 1
	// HalfOpen lets a few trial requests through to see if the
	// destination is back.
	HalfOpen State = 2
)

func (s State) String() string {
	switch s {
	case Closed:
		return "closed"
	case Open:
		return "open"
	case HalfOpen:
		return "half-open"
	}
	return fmt.Sprintf("State(%d)", uint8(s))
}

// BreakerOptions configure a Breaker. With neither ConsecutiveFailures
// nor FailureRate set, it never opens.
type BreakerOptions struct {
	// ConsecutiveFailures opens the breaker after that many failures in
	// a row; a success starts the count again. Zero: off.
	ConsecutiveFailures int
	// FailureRate opens the breaker when the failures in the last Window
	// are at least this fraction, (0, 1], of the outcomes in it, once it
	// holds MinRequests outcomes. Zero: off.
	FailureRate float64
	// Window is how far back FailureRate looks; cut into ten buckets, an
	// outcome counts for between nine tenths of it and the whole.
	// Required with FailureRate.
	Window time.Duration
	// MinRequests is the fewest outcomes in the Window that FailureRate
	// judges (one failure of one request is not a rate). Zero: 1.
	MinRequests int
	// OpenFor is how long the breaker stays open before it lets trial
	// requests through, and how long it waits for their verdict (see
	// Breaker). It does not grow when a trial fails: every opening lasts
	// OpenFor (outlier ejection's growing times are the balancer's
	// business, not the breaker's). Required with either trigger.
	OpenFor time.Duration
	// HalfOpenRequests is how many trial requests the breaker lets
	// through when half-open; the last of them to succeed closes it, the
	// first to fail opens it again. Zero: 1.
	HalfOpenRequests int
	// OnChange, when set, is called on each change of state. It is
	// called with the breaker locked, so calls come one at a time, in the
	// order of the changes (a gauge set from them ends right), and it
	// must return quickly (set a metric, log a line) and must not call
	// the Breaker's methods, which would deadlock.
	OnChange func(from, to State)
}

// Breaker is a circuit breaker for one destination: after too many
// failures it opens and fails requests fast, without sending them, for
// OpenFor; then, half-open, it lets HalfOpenRequests trials through, and
// closes if they all succeed or opens again if one fails.
//
// Every request asks Allow first; an admitted one reports its outcome
// with Done, once, passing the Ticket Allow returned. A Ticket from an
// earlier state (a request sent while closed that ends after the breaker
// opened) is ignored, as is the zero Ticket of a request not admitted:
// only the outcomes of the requests the current state admitted count.
// A trial that never reports (a lost ticket) would hold the breaker
// half-open, refusing everything; so after OpenFor half-open with trials
// out and no verdict, it lets a new round of trials through. A trial of
// an earlier round that reports still counts: a destination whose
// requests take longer than OpenFor can close the breaker.
//
// The breaker changes state only when called (Allow, Done, State,
// Status): an open breaker nobody calls stays open past OpenFor. Safe for
// concurrent use; Allow and Done allocate nothing.
type Breaker struct {
	o BreakerOptions

	mu    sync.Mutex
	state State  // guarded by mu, as all below
	gen   uint64 // counts the periods of a state; a Ticket holds its period's
	// closed
	streak int  // consecutive failures
	ring   ring // a: outcomes, b: failures
	// open
	until time.Time // when it turns half-open
	// half-open
	round  uint64    // counts the rounds of trials in the period
	since  time.Time // when the round began
	trials int       // admitted in the round and not reported
	passed int       // succeeded
}

// Ticket is what Allow gives an admitted request, to pass to Done. The
// zero Ticket is that of a request not admitted.
type Ticket struct{ gen, round uint64 }

// NewBreaker returns a closed breaker. It panics on options a config
// validator refuses: a negative count or duration, a FailureRate outside
// [0, 1], a FailureRate without a Window, or a trigger without OpenFor.
func NewBreaker(o BreakerOptions) *Breaker {
	on := o.ConsecutiveFailures > 0 || o.FailureRate > 0
	if o.ConsecutiveFailures < 0 || o.MinRequests < 0 || o.HalfOpenRequests < 0 || o.OpenFor < 0 || o.Window < 0 ||
		!(o.FailureRate >= 0 && o.FailureRate <= 1) || (o.FailureRate > 0 && o.Window == 0) || (on && o.OpenFor == 0) {
		panic(fmt.Sprintf("resilience: NewBreaker: invalid options %+v", o))
	}
	o.MinRequests = max(o.MinRequests, 1)
	o.HalfOpenRequests = max(o.HalfOpenRequests, 1)
	b := &Breaker{o: o, gen: 1}
	if o.FailureRate > 0 {
		b.ring = newRing(o.Window)
	}
	return b
}

// Allow reports whether a request may be sent now: always when closed,
// never when open, and when half-open only while fewer than
// HalfOpenRequests trials have been let through. An admitted request
// must report with Done(ticket, ...).
func (b *Breaker) Allow(now time.Time) (Ticket, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.tick(now)
	switch b.state {
	case Closed:
		return Ticket{gen: b.gen}, true
	case HalfOpen:
		if b.trials+b.passed < b.o.HalfOpenRequests {
			b.trials++
			return Ticket{gen: b.gen, round: b.round}, true
		}
	}
	return Ticket{}, false
}

// Done reports the outcome of a request Allow admitted with t. What
// counts as a failure is the caller's: a connect failure, a reset, a
// timeout, a 5xx. A ticket of an earlier state, or the zero Ticket, is
// ignored. Report each ticket once: a second report counts again.
func (b *Breaker) Done(t Ticket, success bool, now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.tick(now)
	if t.gen != b.gen {
		return
	}
	switch b.state {
	case Closed:
		b.outcome(success, now)
	case HalfOpen:
		if t.round == b.round && b.trials > 0 { // > 0: unless reported twice
			b.trials--
		}
		if !success {
			b.open(now)
			return
		}
		b.passed++
		if b.passed >= b.o.HalfOpenRequests {
			b.set(Closed)
		}
	}
}

// Cancel gives back the ticket of a request Allow admitted that ends
// with no outcome to report: it was not sent after all, or what it was
// for is judged by another request's ticket. Half-open, its trial's
// place is free again at once (a ticket never reported holds it for
// OpenFor); otherwise it changes nothing. Cancel a ticket instead of
// reporting it with Done, not as well.
func (b *Breaker) Cancel(t Ticket, now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.tick(now)
	if t.gen == b.gen && b.state == HalfOpen && t.round == b.round && b.trials > 0 {
		b.trials--
	}
}

// outcome counts a closed breaker's outcome and opens it if that was one
// failure too many.
func (b *Breaker) outcome(success bool, now time.Time) {
	if success {
		b.streak = 0
	} else {
		b.streak++
	}
	if b.o.FailureRate > 0 {
		b.ring.advance(now)
		c := b.ring.at()
		c.a++
		if !success {
			c.b++
		}
	}
	if success {
		return
	}
	if b.o.ConsecutiveFailures > 0 && b.streak >= b.o.ConsecutiveFailures {
		b.open(now)
		return
	}
	if b.o.FailureRate > 0 {
		n, failed := b.ring.sum(slots, slots)
		if n >= int64(b.o.MinRequests) && float64(failed) >= b.o.FailureRate*float64(n)-epsilon {
			b.open(now)
		}
	}
}

// tick makes the changes that time alone makes: open to half-open after
// OpenFor, and a new round of trials after OpenFor half-open with trials
// out and no verdict.
func (b *Breaker) tick(now time.Time) {
	switch b.state {
	case Open:
		if !now.Before(b.until) {
			b.set(HalfOpen)
			b.since = now
		}
	case HalfOpen:
		if b.trials > 0 && now.Sub(b.since) >= b.o.OpenFor {
			// Trials lost (never to report) or slower than OpenFor: new
			// ones are let through, and the old still count if they do
			// report.
			b.round++
			b.since, b.trials = now, 0
		}
	}
}

// open opens the breaker for OpenFor from now.
func (b *Breaker) open(now time.Time) {
	b.set(Open)
	b.until = now.Add(b.o.OpenFor)
}

// set changes the state, starts a new period (the tickets of the old one
// are void) with its counts at zero, and tells OnChange.
func (b *Breaker) set(to State) {
	from := b.state
	b.state = to
	b.gen++
	b.streak, b.round, b.trials, b.passed = 0, 0, 0, 0
	b.ring.reset()
	if b.o.OnChange != nil && from != to {
		b.o.OnChange(from, to)
	}
}

// State is the breaker's state at now.
func (b *Breaker) State(now time.Time) State {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.tick(now)
	return b.state
}

// BreakerStatus is what the admin API shows of a breaker.
type BreakerStatus struct {
	State State
	// Outcomes and Failures are those in the FailureRate window (closed;
	// zero without a FailureRate).
	Outcomes, Failures int64
	// ConsecutiveFailures is the failures in a row so far (closed).
	ConsecutiveFailures int
	// OpenUntil is when an open breaker turns half-open (zero otherwise).
	OpenUntil time.Time
	// Trials is the trial requests out in the current round, and Passed
	// those of any round that succeeded (half-open).
	Trials, Passed int
}

// Status is the breaker's state and counts at now.
func (b *Breaker) Status(now time.Time) BreakerStatus {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.tick(now)
	s := BreakerStatus{State: b.state}
	switch b.state {
	case Closed:
		s.ConsecutiveFailures = b.streak
		if b.o.FailureRate > 0 && b.ring.started {
			b.ring.advance(now)
			s.Outcomes, s.Failures = b.ring.sum(slots, slots)
		}
	case Open:
		s.OpenUntil = b.until
	case HalfOpen:
		s.Trials, s.Passed = b.trials, b.passed
	}
	return s
}
