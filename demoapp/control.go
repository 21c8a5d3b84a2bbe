package demoapp

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// faults is how the app misbehaves on command (POST /control): a share
// of its requests answered with an error status, and a delay before
// every answer. The zero value behaves.
type faults struct {
	mu     sync.Mutex
	fail   float64       // share of requests failed, 0 to 1
	status int           // the status they get
	delay  time.Duration // before every answer
}

// Stats counts what the app was asked: the requests it answered (the
// control and stats endpoints aside), those it failed on command, and
// those whose client went away while it waited to answer.
type Stats struct {
	Requests  int64 `json:"requests"`
	Failed    int64 `json:"failed"`
	Cancelled int64 `json:"cancelled"`
}

type counters struct{ requests, failed, cancelled atomic.Int64 }

func (c *counters) snapshot() Stats {
	return Stats{Requests: c.requests.Load(), Failed: c.failed.Load(), Cancelled: c.cancelled.Load()}
}

// setFromQuery sets the faults from POST /control's query: fail (0 to 1),
// status (400 to 599; 503 when fail is given alone) and delay (a
// duration up to 1h). Parameters not given are reset.
func (f *faults) setFromQuery(q map[string][]string) error {
	get := func(k string) string {
		if v := q[k]; len(v) > 0 {
			return v[0]
		}
		return ""
	}
	fail, status, delay := 0.0, http.StatusServiceUnavailable, time.Duration(0)
	if v := get("fail"); v != "" {
		x, err := strconv.ParseFloat(v, 64)
		if err != nil || x < 0 || x > 1 {
			return fmt.Errorf("fail=%q: want a share from 0 to 1, e.g. 0.3", v)
		}
		fail = x
	}
	if v := get("status"); v != "" {
		x, err := strconv.Atoi(v)
		if err != nil || x < 400 || x > 599 {
			return fmt.Errorf("status=%q: want an error status from 400 to 599, e.g. 503", v)
		}
		status = x
	}
	if v := get("delay"); v != "" {
		x, err := time.ParseDuration(v)
		if err != nil || x < 0 || x > time.Hour {
			return fmt.Errorf("delay=%q: want a duration from 0 to 1h, e.g. 2s", v)
		}
		delay = x
	}
	f.mu.Lock()
	f.fail, f.status, f.delay = fail, status, delay
	f.mu.Unlock()
	return nil
}

func (f *faults) get() (fail float64, status int, delay time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.fail, f.status, f.delay
}

// controlled wraps the app's API: each request is counted, waits the
// commanded delay and its own ?sleep=, and is failed with the commanded
// share; POST /control and GET /stats are served as they are.
func controlled(api http.Handler) http.Handler {
	var f faults
	var c counters
	mux := http.NewServeMux()
	mux.HandleFunc("POST /control", func(w http.ResponseWriter, r *http.Request) {
		if err := f.setFromQuery(r.URL.Query()); err != nil {
			http.Error(w, "POST /control: "+err.Error(), http.StatusBadRequest)
			return
		}
		fail, status, delay := f.get()
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"fail": fail, "status": status, "delay": delay.String()})
	})
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(c.snapshot())
	})
	gs := grpcServer(&f, &c)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
			gs.ServeHTTP(w, r) // counted, delayed and failed by the service itself
			return
		}
		c.requests.Add(1)
		fail, status, delay := f.get()
		if v := r.URL.Query().Get("sleep"); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil || d < 0 || d > time.Hour {
				http.Error(w, "want ?sleep=DURATION between 0 and 1h, e.g. 5ms", http.StatusBadRequest)
				return
			}
			delay += d
		}
		if delay > 0 {
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-r.Context().Done():
				t.Stop()
				c.cancelled.Add(1)
				return // the client is gone: nobody waits for the answer
			}
		}
		if fail > 0 && rand.Float64() < fail {
			c.failed.Add(1)
			http.Error(w, "demo-app: failing on command", status)
			return
		}
		api.ServeHTTP(w, r)
	})
	return mux
}
