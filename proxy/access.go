package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"meshgate/netlist"
	"meshgate/proxy/policy"
)

// AccessConfig is the coarse access control that comes before
// authorization (shared/DESIGN.md §5 Policy, issue 15): IP allow and deny
// lists, checked when a connection is accepted, before it costs a TLS
// handshake or a protocol detection; and request blocking by header
// pattern, a stage of the request path before jwt and policy. It is
// hot-reloaded with the config file; a list's files are also watched
// and reloaded on their own. Nothing configured costs nothing: no check
// per connection, no stage per request.
type AccessConfig struct {
	// IPLists are CIDR lists that refuse connections by address: the
	// caller's (inbound) or the destination's (outbound). Deny beats
	// allow: an address in any deny list of its direction is refused;
	// then, once a direction has an allow list, an address in none of
	// its allow lists is refused (reason "default").
	IPLists []IPList `json:"ipLists"`
	// HeaderBlocks refuse HTTP requests whose header matches a pattern:
	// 403 (gRPC PERMISSION_DENIED) with X-Meshgate-Error "block: <name>".
	HeaderBlocks []HeaderBlock `json:"headerBlocks"`
}

// IPList is a named list of CIDRs and addresses, inline and from files.
type IPList struct {
	// Name names the list in refusals: the log line's reason, the
	// metric's rule label. Unique among ipLists and headerBlocks; letters,
	// digits, '.', '_' and '-'.
	Name string `json:"name"`
	// Action is deny (refuse the addresses listed) or allow (refuse the
	// addresses no allow list of the direction lists).
	Action IPListAction `json:"action"`
	// Direction is inbound (the default: the caller's source address,
	// checked at accept) or outbound (the address the app connects to,
	// checked once its original destination is known, before it is
	// dialed or detected).
	Direction policy.Direction `json:"direction"`
	// CIDRs are listed inline.
	CIDRs []netip.Prefix `json:"cidrs"`
	// Files are list files: one CIDR or address per line, '#' comments,
	// blank lines ignored, at most maxListEntries entries and
	// maxListFileBytes bytes. Absolute paths. They are watched (their
	// directory, so a ConfigMap's symlink swap is seen) and reloaded on
	// change; a file that then fails to read or parse is logged with its
	// line numbers and problems, and its last good content stays. At
	// start a bad file is an error.
	Files []string `json:"files"`
}

// IPListAction is what an IP list does with the addresses it holds.
type IPListAction string

// The IP list actions.
const (
	IPListAllow IPListAction = "allow"
	IPListDeny  IPListAction = "deny"
)

// HeaderBlock refuses requests by a header's value.
type HeaderBlock struct {
	// Name names the block in refusals (X-Meshgate-Error, the access
	// log, the metric's rule label).
	Name string `json:"name"`
	// Header is the header field, any case. Every field of that name is
	// looked at (a second User-Agent does not hide the first); Host is
	// the request's authority in HTTP/2 too. A request without the
	// header is never blocked.
	Header string `json:"header"`
	// Pattern is an RE2 regular expression
	// (https://github.com/google/re2/wiki/Syntax) searched for in the
	// value: "curl" matches "curl/8.1"; anchor it (^...$) to match the
	// whole value; (?i) ignores case.
	Pattern string `json:"pattern"`
	// Direction is inbound (the default: requests to the app) or
	// outbound (requests the app makes).
	Direction policy.Direction `json:"direction"`
	// Ports, if set, limit the block to these app ports (inbound) or
	// destination ports (outbound).
	Ports []uint16 `json:"ports"`
}

// The bounds of an IP list file.
const (
	maxListEntries   = 500_000
	maxListFileBytes = 16 << 20
)

// The stage names of access refusals (X-Meshgate-Error, the log, the
// metric's stage label).
const (
	stageIPList = "ip-list"
	stageBlock  = "block"
)

var accessNameRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// validate reports the problems of the access section; opaque are the
// ports declared opaque, where no request is HTTP.
func (c AccessConfig) validate(protocols ProtocolsConfig) []error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	names := map[string]string{}
	name := func(f, n string) {
		switch {
		case n == "":
			bad("%s.name: missing; name it, e.g. blocked-scanners: refusals give it as the reason", f)
		case n == policy.DefaultRule:
			bad("%s.name: %q names refusals of addresses in no allow list; choose another", f, n)
		case !accessNameRE.MatchString(n):
			bad("%s.name: %q: want 1 to 64 letters, digits, '.', '_' or '-'", f, n)
		case names[n] != "":
			bad("%s.name: %q is also %s.name; give each its own name", f, n, names[n])
		default:
			names[n] = f
		}
	}
	direction := func(f string, d policy.Direction) {
		if d != "" && d != policy.Inbound && d != policy.Outbound {
			bad("%s.direction: %q is not a direction; want inbound or outbound", f, string(d))
		}
	}
	for i, l := range c.IPLists {
		f := fmt.Sprintf("access.ipLists[%d]", i)
		name(f, l.Name)
		switch l.Action {
		case IPListAllow, IPListDeny:
		case "":
			bad("%s.action: missing; want deny or allow", f)
		default:
			bad("%s.action: %q is not an action; want deny or allow", f, string(l.Action))
		}
		direction(f, l.Direction)
		if len(l.CIDRs) == 0 && len(l.Files) == 0 {
			bad("%s: lists nothing; give cidrs, files or both", f)
		}
		for j, p := range l.CIDRs {
			if err := netlist.CheckPrefix(p); err != nil {
				bad("%s.cidrs[%d]: %v", f, j, err)
			}
		}
		for j, path := range l.Files {
			switch {
			case path == "":
				bad("%s.files[%d]: empty; want the list file's absolute path, e.g. /etc/meshgate/blocked.txt", f, j)
			case !filepath.IsAbs(path):
				bad("%s.files[%d]: %q is relative; want an absolute path, e.g. /etc/meshgate/blocked.txt", f, j, path)
			case slices.Index(l.Files, path) < j:
				bad("%s.files[%d]: %q is listed twice; list it once", f, j, path)
			}
		}
	}
	for i, b := range c.HeaderBlocks {
		f := fmt.Sprintf("access.headerBlocks[%d]", i)
		name(f, b.Name)
		if !validHeaderName(b.Header) {
			bad("%s.header: %q is not a header name; want e.g. User-Agent", f, b.Header)
		}
		if b.Pattern == "" {
			bad("%s.pattern: missing; want an RE2 regular expression searched for in the value, e.g. (?i)curl; ^ blocks any value", f)
		} else if _, err := regexp.Compile(b.Pattern); err != nil {
			bad("%s.pattern: %q is not an RE2 regular expression: %v", f, b.Pattern, strings.TrimPrefix(err.Error(), "error parsing regexp: "))
		}
		direction(f, b.Direction)
		for j, port := range b.Ports {
			switch {
			case port == 0:
				bad("%s.ports[%d]: 0 is not a port; want a number from 1 to 65535", f, j)
			case protocols.Ports[port] == PortOpaque:
				bad("%s.ports[%d]: port %d is declared opaque (protocols.ports), so no request to it is HTTP and the block "+
					"could never apply; declare the port detect or http, or leave it out", f, j, port)
			}
		}
	}
	return errs
}

// accessState is the access control in effect. A reload swaps in a new
// one; a list file's change swaps the sets of the lists that use it.
type accessState struct {
	cfg AccessConfig
	// ip is each direction's IP lists; nil: none, no check.
	ip [2]*ipCheck
	// blocks is each direction's header blocks, in config order.
	blocks [2][]*headerBlock
	files  []*listFile
	log    *zap.Logger
	// stop ends the file watcher; done is closed when it has.
	stop context.CancelFunc
	done chan struct{}
}

// ipCheck is one direction's IP lists.
type ipCheck struct {
	dir   Direction
	deny  []*ipList
	allow []*ipList // none: no default deny
	// notAllowed counts (and logs) addresses in none of the allow lists.
	notAllowed prometheus.Counter
	notLog     logLimiter
	allowNames string
}

// ipList is an IPList compiled: its set is swapped when a file changes.
type ipList struct {
	cfg    IPList
	field  string // access.ipLists[i]
	files  []*listFile
	set    atomic.Pointer[netlist.Set]
	denied prometheus.Counter
	log    logLimiter
}

// listFile is a list file and its last good content.
type listFile struct {
	path  string
	field string // the first list's field that names it
	good  atomic.Pointer[[]netip.Prefix]
	data  []byte    // what good was read from (the watcher's)
	lists []*ipList // the lists that use it
}

// headerBlock is a HeaderBlock compiled.
type headerBlock struct {
	cfg    HeaderBlock
	host   bool // the header is Host: match the authority
	re     *regexp.Regexp
	ports  []uint16
	denied prometheus.Counter
}

// newAccessState compiles cfg (which passed Config.Validate), reading
// its list files. A file that cannot be read or parsed keeps the content
// prev had for it, logged; without one, it is an error. m, when not nil,
// gives the refusals their counters.
func newAccessState(cfg AccessConfig, prev *accessState, m *metrics, log *zap.Logger) (*accessState, error) {
	st := &accessState{cfg: cfg, log: log}
	counter := func(dir Direction, stage, rule string) prometheus.Counter {
		if m == nil {
			return prometheus.NewCounter(prometheus.CounterOpts{Name: "unused"})
		}
		return m.accessDenials.WithLabelValues(dir.String(), stage, rule)
	}
	byPath := map[string]*listFile{}
	var errs []error
	for i, l := range cfg.IPLists {
		dir := accessDir(l.Direction)
		il := &ipList{cfg: l, field: fmt.Sprintf("access.ipLists[%d]", i)}
		for j, path := range l.Files {
			lf := byPath[path]
			if lf == nil {
				lf = &listFile{path: path, field: fmt.Sprintf("%s.files[%d]", il.field, j)}
				data, ps, err := readListFile(path)
				switch {
				case err == nil:
					lf.data = data
					lf.good.Store(&ps)
				case prev.lastGood(path) != nil:
					// Its data stays nil (the old watcher owns the old's):
					// the next good read counts as a change.
					lf.good.Store(prev.lastGood(path).good.Load())
					log.Error("ip list file refused: its last good content stays", zap.String("field", lf.field),
						zap.String("file", path), zap.Strings("problems", problems(err)))
				default:
					errs = append(errs, splitJoined(prefixed(lf.field, err))...)
				}
				byPath[path] = lf
				st.files = append(st.files, lf)
			}
			lf.lists = append(lf.lists, il)
			il.files = append(il.files, lf)
		}
		ck := st.ip[dir]
		if ck == nil {
			ck = &ipCheck{dir: dir}
			st.ip[dir] = ck
		}
		if l.Action == IPListAllow {
			ck.allow = append(ck.allow, il)
		} else {
			ck.deny = append(ck.deny, il)
		}
		il.denied = counter(dir, stageIPList, l.Name)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	for _, ck := range st.ip {
		if ck == nil {
			continue
		}
		for _, l := range slices.Concat(ck.deny, ck.allow) {
			l.rebuild()
		}
		if len(ck.allow) > 0 {
			var names []string
			for _, l := range ck.allow {
				names = append(names, l.cfg.Name)
			}
			ck.allowNames = strings.Join(names, ", ")
			ck.notAllowed = counter(ck.dir, stageIPList, policy.DefaultRule)
		}
	}
	for _, b := range cfg.HeaderBlocks {
		dir := accessDir(b.Direction)
		st.blocks[dir] = append(st.blocks[dir], &headerBlock{
			cfg:    b,
			host:   strings.EqualFold(b.Header, "host"),
			re:     regexp.MustCompile(b.Pattern),
			ports:  b.Ports,
			denied: counter(dir, stageBlock, b.Name),
		})
	}
	return st, nil
}

// lastGood is st's file at path, nil if none (or st nil).
func (st *accessState) lastGood(path string) *listFile {
	if st == nil {
		return nil
	}
	for _, f := range st.files {
		if f.path == path && f.good.Load() != nil {
			return f
		}
	}
	return nil
}

func accessDir(d policy.Direction) Direction {
	if d == policy.Outbound {
		return Outbound
	}
	return Inbound
}

// readListFile reads and parses the list file at path.
func readListFile(path string) ([]byte, []netip.Prefix, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxListFileBytes+1))
	if err != nil {
		return nil, nil, err
	}
	if len(data) > maxListFileBytes {
		return nil, nil, fmt.Errorf("%s: larger than %d MiB; split the list, or merge its CIDRs", path, maxListFileBytes>>20)
	}
	ps, err := netlist.ParseLines(data, maxListEntries)
	if err != nil {
		return nil, nil, prefixed(path, err)
	}
	return data, ps, nil
}

// prefixed puts prefix in front of each problem of err (errors.Join).
func prefixed(prefix string, err error) error {
	var errs []error
	for _, e := range splitJoined(err) {
		errs = append(errs, fmt.Errorf("%s: %w", prefix, e))
	}
	return errors.Join(errs...)
}

// rebuild makes the list's set from its inline CIDRs and its files'
// last good content.
func (l *ipList) rebuild() {
	lists := [][]netip.Prefix{l.cfg.CIDRs}
	for _, f := range l.files {
		if g := f.good.Load(); g != nil {
			lists = append(lists, *g)
		}
	}
	l.set.Store(netlist.NewSet(lists...))
}

// decide is what the lists say of a: the deny list that holds it, or,
// with allow lists, nil and true when none holds it. nil, false: allowed.
func (c *ipCheck) decide(a netip.Addr) (*ipList, bool) {
	for _, l := range c.deny {
		if l.set.Load().Contains(a) {
			return l, true
		}
	}
	if len(c.allow) == 0 {
		return nil, false
	}
	for _, l := range c.allow {
		if l.set.Load().Contains(a) {
			return l, false
		}
	}
	return nil, true
}

// reason is the refusal's reason for the log: "ip-list: <name>".
func (c *ipCheck) reason(l *ipList) string {
	if l == nil {
		return stageIPList + ": " + policy.DefaultRule + " (in no allow list: " + c.allowNames + ")"
	}
	return stageIPList + ": " + l.cfg.Name
}

// refusedAtAccept reports whether the inbound lists refuse the caller
// of c, which it then resets, counts and logs (at most a line a second
// per list). It is the first thing done with an accepted connection: no
// handler, handshake or detection is spent on a refused one.
func (p *Proxy) refusedAtAccept(l *captureListener, c *net.TCPConn) bool {
	if l.dir != Inbound {
		return false // outbound is decided by destination: refusedOut
	}
	ck := p.acl.Load().ip[Inbound]
	if ck == nil {
		return false
	}
	src := addrPort(c.RemoteAddr())
	list, denied := ck.decide(src.Addr())
	if !denied {
		return false
	}
	reset(c)
	m := &p.metrics.dir[Inbound]
	m.opened.Inc()
	m.closed.Inc()
	p.countIPDenial(ck, list, src, netip.AddrPort{})
	return true
}

// refusedOut is the outcome of the app's connection to dst when the
// outbound lists refuse it (ok true): reset before it is dialed or
// detected, counted, and logged with the connection.
func (p *Proxy) refusedOut(dst netip.AddrPort) (outcome, bool) {
	ck := p.acl.Load().ip[Outbound]
	if ck == nil {
		return outcome{}, false
	}
	list, denied := ck.decide(dst.Addr())
	if !denied {
		return outcome{}, false
	}
	counter := ck.notAllowed
	if list != nil {
		counter = list.denied
	}
	counter.Inc()
	reason := ck.reason(list)
	return outcome{dst: dst, err: &accessDenied{reason}, refused: true, reason: reason}, true
}

// accessDenied is a connection refused by an IP list.
type accessDenied struct{ reason string }

func (e *accessDenied) Error() string { return "refused by " + e.reason }

// countIPDenial counts a connection list refused (nil: in no allow list)
// and logs it, at warn, at most once a second per list, with how many
// it refused since its last line.
func (p *Proxy) countIPDenial(ck *ipCheck, list *ipList, src, dst netip.AddrPort) {
	counter, lim := ck.notAllowed, &ck.notLog
	if list != nil {
		counter, lim = list.denied, &list.log
	}
	counter.Inc()
	n, ok := lim.take(time.Now().UnixNano())
	if !ok {
		return
	}
	if ce := p.log.Check(zapcore.WarnLevel, "connection refused"); ce != nil {
		name := policy.DefaultRule
		if list != nil {
			name = list.cfg.Name
		}
		fields := []zap.Field{zap.Stringer("direction", ck.dir), zap.Stringer("src", src)}
		if dst.IsValid() {
			fields = append(fields, zap.Stringer("dst", dst))
		}
		ce.Write(append(fields, zap.String("reason", ck.reason(list)), zap.String("list", name),
			zap.Int64("refused_since_last_line", n))...)
	}
}

// logLimiter lets a log line through at most once per logEvery, and
// counts the events since the last line: a caller refused in a loop
// cannot flood the log.
type logLimiter struct {
	next atomic.Int64 // unix nanoseconds
	held atomic.Int64
}

const logEvery = time.Second

// take counts one event; ok says a line is due, n how many events it
// stands for.
func (l *logLimiter) take(now int64) (n int64, ok bool) {
	l.held.Add(1)
	next := l.next.Load()
	if now < next || !l.next.CompareAndSwap(next, now+int64(logEvery)) {
		return 0, false
	}
	return l.held.Swap(0), true
}

// blockStage refuses requests by header pattern (HeaderBlock); it is in
// a direction's chain only when that direction has blocks.
type blockStage struct{ blocks []*headerBlock }

func (blockStage) Name() string { return stageBlock }

func (s blockStage) Decide(r *Request) *Answer {
	for _, b := range s.blocks {
		if len(b.ports) > 0 && !slices.Contains(b.ports, r.Dst.Port()) {
			continue
		}
		var hit bool
		if b.host {
			hit = b.re.MatchString(r.Authority())
		} else {
			hit = r.Match(b.cfg.Header, b.re)
		}
		if hit {
			b.denied.Inc()
			return &Answer{Status: http.StatusForbidden, Reason: b.cfg.Name, grpcStatus: grpcPermissionDenied,
				logReason: fmt.Sprintf("%s: header %s matches %q", b.cfg.Name, b.cfg.Header, b.cfg.Pattern)}
		}
	}
	return nil
}

// blocksPort reports whether a header block of dir applies to port: its
// connections' first bytes are then awaited before the app is dialed,
// so that a client cannot pass HTTP as bytes by waiting for an app that
// speaks first.
func (p *Proxy) blocksPort(dir Direction, port uint16) bool {
	for _, b := range p.acl.Load().blocks[dir] {
		if len(b.ports) == 0 || slices.Contains(b.ports, port) {
			return true
		}
	}
	return false
}

// start watches the state's list files until close.
func (st *accessState) start() {
	if len(st.files) == 0 {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	st.stop, st.done = cancel, make(chan struct{})
	w, err := fsnotify.NewWatcher()
	if err == nil {
		for _, dir := range st.dirs() {
			if err = w.Add(dir); err != nil {
				break
			}
		}
	}
	if err != nil {
		st.log.Error("ip list files are not watched: a change takes effect on the next config reload", zap.Error(err))
		if w != nil {
			w.Close()
		}
		close(st.done)
		return
	}
	go func() {
		defer close(st.done)
		defer w.Close()
		st.watch(ctx, w)
	}()
}

// dirs are the directories of the state's files.
func (st *accessState) dirs() []string {
	var out []string
	for _, f := range st.files {
		if d := filepath.Dir(f.path); !slices.Contains(out, d) {
			out = append(out, d)
		}
	}
	return out
}

// close stops the watcher and waits for it.
func (st *accessState) close() {
	if st.stop != nil {
		st.stop()
		<-st.done
	}
}

// watch rereads the files when their directories change (a burst of
// events: once, a moment after the last), until ctx is done.
func (st *accessState) watch(ctx context.Context, w *fsnotify.Watcher) {
	const settle = 100 * time.Millisecond
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case err, ok := <-w.Errors:
			if !ok {
				return
			}
			st.log.Warn("watching the ip list files", zap.Error(err))
		case ev, ok := <-w.Events:
			if !ok {
				return
			}
			for _, f := range st.files {
				if filepath.Clean(ev.Name) == filepath.Clean(f.path) ||
					filepath.Base(ev.Name) == "..data" && filepath.Dir(ev.Name) == filepath.Dir(f.path) {
					timer.Reset(settle)
					break
				}
			}
		case <-timer.C:
			st.reread()
		}
	}
}

// reread reloads every file whose content changed; a file that fails
// keeps its last good content, with the problems logged.
func (st *accessState) reread() {
	for _, f := range st.files {
		data, ps, err := readListFile(f.path)
		switch {
		case errors.Is(err, os.ErrNotExist):
			st.log.Warn("ip list file missing: its last good content stays", zap.String("field", f.field), zap.String("file", f.path))
			continue
		case err != nil:
			st.log.Error("ip list file refused: its last good content stays", zap.String("field", f.field),
				zap.String("file", f.path), zap.Strings("problems", problems(err)))
			f.data = nil // the next good content is a change, whatever it is
			continue
		case string(data) == string(f.data):
			continue
		}
		f.data = data
		f.good.Store(&ps)
		for _, l := range f.lists {
			l.rebuild()
		}
		st.log.Info("ip list file reloaded", zap.String("field", f.field), zap.String("file", f.path), zap.Int("entries", len(ps)))
	}
}

// ReloadAccess puts ac in effect (it must have passed Config.Validate):
// new connections and requests meet its lists and blocks at once. A list
// file that cannot be read or parsed keeps its last good content; one
// new to the config must be good, or ac is refused and the running
// access control stays.
func (p *Proxy) ReloadAccess(ac AccessConfig) error {
	st, err := p.prepareAccess(ac)
	if err != nil {
		return err
	}
	p.commitAccess(st)
	return nil
}

// prepareAccess builds the state ReloadAccess would put in effect, for
// commitAccess; nothing of it runs until then, so a reload that fails
// later just drops it.
func (p *Proxy) prepareAccess(ac AccessConfig) (*accessState, error) {
	p.cfgMu.Lock()
	defer p.cfgMu.Unlock()
	return newAccessState(ac, p.acl.Load(), p.metrics, p.log.Named("acl"))
}

// commitAccess swaps st in and starts its file watching.
func (p *Proxy) commitAccess(st *accessState) {
	p.cfgMu.Lock()
	defer p.cfgMu.Unlock()
	ac := st.cfg
	old := p.acl.Load()
	old.close()
	p.acl.Store(st)
	if p.started.Load() && !p.stopped {
		st.start()
	}
	p.cfg.Access = ac
	p.rebuildChains()
	// The series of lists and blocks that are gone would otherwise stay.
	keep := map[string]bool{policy.DefaultRule: true}
	for _, l := range ac.IPLists {
		keep[l.Name] = true
	}
	for _, b := range ac.HeaderBlocks {
		keep[b.Name] = true
	}
	for _, n := range slices.Concat(namesOf(old.cfg.IPLists, func(l IPList) string { return l.Name }),
		namesOf(old.cfg.HeaderBlocks, func(b HeaderBlock) string { return b.Name })) {
		if !keep[n] {
			p.metrics.accessDenials.DeletePartialMatch(prometheus.Labels{"rule": n})
		}
	}
}

func namesOf[T any](s []T, name func(T) string) []string {
	out := make([]string, len(s))
	for i, v := range s {
		out[i] = name(v)
	}
	return out
}

// AccessTrace is what the access control would do of a call explained:
// its IP lists and header blocks, checked before policy.
type AccessTrace struct {
	// IPLists and Blocks are lines for people, empty when nothing of
	// the kind is configured for the call's direction.
	IPLists []string
	Blocks  []string
	// Denied names the stage and the rule that would refuse the call
	// ("ip-list: blocked"), "" if none.
	Denied string
}

// explain says what st's lists and blocks would do of q.
func (st *accessState) explain(q ExplainQuery) AccessTrace {
	var t AccessTrace
	dir, addr, which := Inbound, q.SourceIP, "source"
	if q.Direction == policy.Outbound {
		dir, addr, which = Outbound, q.DestIP, "destination"
	}
	if ck := st.ip[dir]; ck != nil {
		switch list, denied := ck.decide(addr); {
		case !addr.IsValid():
			flag := "--source-ip (source-ip)"
			if dir == Outbound {
				flag = "--to-ip (to-ip)"
			}
			t.IPLists = append(t.IPLists, fmt.Sprintf("not checked: %s lists apply, give the %s address (%s)", dir, which, flag))
		case denied && list != nil:
			t.Denied = ck.reason(list)
			t.IPLists = append(t.IPLists, fmt.Sprintf("DENY: %s %s is in deny list %s (%s); the connection is closed at once", which, addr, list.cfg.Name, list.field))
		case denied:
			t.Denied = ck.reason(nil)
			t.IPLists = append(t.IPLists, fmt.Sprintf("DENY: %s %s is in no allow list (%s); the connection is closed at once", which, addr, ck.allowNames))
		case list != nil:
			t.IPLists = append(t.IPLists, fmt.Sprintf("allow: %s %s is in allow list %s, in no deny list", which, addr, list.cfg.Name))
		default:
			t.IPLists = append(t.IPLists, fmt.Sprintf("allow: %s %s is in no deny list", which, addr))
		}
	}
	if blocks := st.blocks[dir]; len(blocks) > 0 {
		if q.Method == "" {
			t.Blocks = append(t.Blocks, "not checked: the call is not HTTP")
			return t
		}
		for _, b := range blocks {
			if len(b.ports) > 0 && !slices.Contains(b.ports, q.Port) {
				continue
			}
			var vals []string
			if b.host {
				vals = []string{q.Authority}
			} else {
				vals = q.Header.Values(b.cfg.Header)
			}
			for _, v := range vals {
				if b.re.MatchString(v) && t.Denied == "" {
					t.Denied = stageBlock + ": " + b.cfg.Name
					t.Blocks = append(t.Blocks, fmt.Sprintf("DENY by %s: header %s %q matches %q; answered 403", b.cfg.Name, b.cfg.Header, v, b.cfg.Pattern))
				}
			}
		}
		if !strings.HasPrefix(t.Denied, stageBlock) {
			t.Blocks = append(t.Blocks, fmt.Sprintf("pass: no header block of %d matches", len(blocks)))
		}
	}
	return t
}

// format writes t for people, before the policy trace.
func (t AccessTrace) format(w io.Writer) {
	for _, l := range t.IPLists {
		fmt.Fprintf(w, "ip lists: %s\n", l)
	}
	for _, l := range t.Blocks {
		fmt.Fprintf(w, "block:    %s\n", l)
	}
	if t.Denied != "" {
		fmt.Fprintf(w, "          refused (%s) before policy; policy alone would say:\n", t.Denied)
	}
}
