package proxy

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"meshgate/proxy/resilience"
)

// ReloadPolicy puts pc in effect (shared/DESIGN.md §5, Config): new
// connections and requests are decided by it at once; connections
// already allowed stay so, and connections whose requests are being
// decided keep the rules they were accepted under. pc must have passed
// Config.Validate. A pc whose JWT providers cannot be made (a JWKS file
// unreadable) is refused, and the running policy stays.
func (p *Proxy) ReloadPolicy(pc PolicyConfig) error {
	p.cfgMu.Lock()
	defer p.cfgMu.Unlock()
	st, err := p.newPolicyState(pc, p.policy.Load())
	if err != nil {
		return err
	}
	// The old state's refreshing stops before the new one's starts: the
	// providers it shares are refreshed by one at a time.
	old := p.policy.Swap(st)
	old.close()
	if p.started.Load() && !p.stopped {
		st.start()
	}
	p.cfg.Policy = pc
	// The series of rules that are gone would otherwise stay in /metrics.
	keep := map[[2]string]bool{}
	for _, r := range st.eng.Rules() {
		keep[[2]string{r.Policy, r.Name}] = true
	}
	for _, r := range old.eng.Rules() {
		if !keep[[2]string{r.Policy, r.Name}] {
			p.metrics.policyDecisions.DeletePartialMatch(prometheus.Labels{"policy": r.Policy, "rule": r.Name})
		}
	}
	return nil
}

// ReloadResilience puts rc in effect (it must have passed
// Config.Validate): the next connections and requests are resolved
// against it.
func (p *Proxy) ReloadResilience(rc resilience.Config) error {
	t, err := resilience.New(rc)
	if err != nil {
		return err
	}
	p.commitResilience(t, rc)
	return nil
}

// commitResilience swaps in t, compiled from rc. Connections and requests
// already resolved keep the policies they were given: a Table is
// read-only, and the old one lives as long as they hold its policies.
func (p *Proxy) commitResilience(t *resilience.Table, rc resilience.Config) {
	p.cfgMu.Lock()
	defer p.cfgMu.Unlock()
	p.resilience.Store(t)
	p.guards.retable(t, rc)
	p.l7.mesh.retable(t)
	p.cfg.Resilience = rc
	p.rebuildChains() // the fault and mirror stages are in a chain only while some destination has them
}

// resilienceTable returns the resilience section in effect, compiled;
// the data path resolves each outbound connection and request against
// the table it loads once for them.
func (p *Proxy) resilienceTable() *resilience.Table { return p.resilience.Load() }

// WatchConfig reloads the config file at path when it changes, until ctx
// is done: the policy, access, rateLimits, redis and resilience sections
// take effect (ReloadPolicy, ReloadAccess, ReloadRateLimits,
// ReloadResilience), all of them or, when one cannot be put in effect,
// none; a change to any other section is logged as needing a restart,
// and the running value stays. A file that does not parse or validate is
// refused with every problem logged, and nothing changes. The directory is watched,
// not the file, so that editors that write a new file and rename it, and
// Kubernetes ConfigMap volumes that swap a symlink, are seen.
func (p *Proxy) WatchConfig(ctx context.Context, path string) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("proxy: watch config: %w", err)
	}
	defer w.Close()
	if err := w.Add(filepath.Dir(path)); err != nil {
		return fmt.Errorf("proxy: watch config %s: %w", path, err)
	}
	log := p.log.Named("config")
	prev, _ := os.ReadFile(path)
	prevCfg, _ := ParseConfig(prev)
	// Events come in bursts (write, chmod, rename): one reload, a
	// moment after the last.
	const settle = 100 * time.Millisecond
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	name := filepath.Clean(path)
	for {
		select {
		case <-ctx.Done():
			return nil
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			log.Warn("watching the config file", zap.Error(err))
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			if filepath.Clean(ev.Name) == name || filepath.Base(ev.Name) == "..data" {
				timer.Reset(settle)
			}
		case <-timer.C:
			data, err := os.ReadFile(path)
			if err != nil {
				if !errors.Is(err, os.ErrNotExist) {
					log.Error("config reload refused: the running config stays", zap.String("file", path), zap.Error(err))
				}
				continue
			}
			if string(data) == string(prev) {
				continue
			}
			cfg, err := ParseConfig(data)
			if err == nil {
				err = cfg.Validate()
			}
			if err != nil {
				log.Error("config reload refused: the running config stays", zap.String("file", path),
					zap.Strings("problems", problems(err)))
				continue
			}
			// Everything that can fail is prepared before anything is
			// committed; ReloadPolicy, which prepares and commits, comes
			// last among them.
			res, err := resilience.New(cfg.Resilience)
			if err != nil {
				log.Error("config reload refused: the running config stays", zap.String("file", path), zap.Error(err))
				continue
			}
			rl, err := p.prepareRateLimits(cfg.RateLimits, cfg.Redis)
			if err != nil {
				log.Error("config reload refused: the running config stays", zap.String("file", path), zap.Error(err))
				continue
			}
			acc, err := p.prepareAccess(cfg.Access)
			if err != nil {
				p.discardRateLimits(rl)
				log.Error("config reload refused: the running config stays", zap.String("file", path), zap.Error(err))
				continue
			}
			if err := p.ReloadPolicy(cfg.Policy); err != nil {
				p.discardRateLimits(rl)
				log.Error("config reload refused: the running config stays", zap.String("file", path), zap.Error(err))
				continue
			}
			p.commitAccess(acc)
			p.commitRateLimits(rl)
			p.commitResilience(res, cfg.Resilience)
			changed := restartFields(prevCfg, cfg)
			prev, prevCfg = data, cfg
			log.Info("config reloaded", zap.String("file", path), zap.Int("policy_rules", len(cfg.Policy.Rules)),
				zap.Int("jwt_providers", len(cfg.Policy.JWTProviders)), zap.Int("rate_limits", len(cfg.RateLimits)),
				zap.Int("resilience_destinations", len(cfg.Resilience.Destinations)))
			if len(changed) > 0 {
				log.Warn("config sections changed that take effect only on restart; they keep their running values",
					zap.Strings("sections", changed))
			}
		}
	}
}

// problems splits a validation error into its lines.
func problems(err error) []string {
	var out []string
	for _, e := range splitJoined(err) {
		out = append(out, e.Error())
	}
	return out
}

// restartFields names the top-level sections but those hot-reloaded
// (policy, access, rateLimits, redis, resilience) that differ between a
// and b.
func restartFields(a, b Config) []string {
	var out []string
	va, vb := reflect.ValueOf(a), reflect.ValueOf(b)
	for i, f := range reflect.VisibleFields(va.Type()) {
		name := f.Tag.Get("json")
		switch name {
		case "policy", "access", "rateLimits", "redis", "resilience":
			continue
		}
		if !reflect.DeepEqual(va.Field(i).Interface(), vb.Field(i).Interface()) {
			out = append(out, name)
		}
	}
	return out
}
