package mtls

import (
	"crypto/sha256"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"go.uber.org/zap"
)

// Timings of DirSource.
const (
	// dirDebounce is how long the directory must be quiet after a change
	// before it is read: the three files of a plain replace (or a
	// kubelet's swap of the ..data symlink) land within it.
	dirDebounce = 100 * time.Millisecond
	// dirResync re-reads the directory even with no event, in case the
	// kernel's event queue overflowed or the watch was lost (the
	// directory itself replaced, say).
	dirResync = time.Minute
)

// DirSource is a Source reading a certificate directory (cert.pem, key.pem,
// bundle.pem; see CertFile, KeyFile, BundleFile) and reloading it when it
// changes.
//
// It watches the directory, not the files, so it follows every way files
// get replaced: Kubernetes secret and projected volumes, which swap a
// "..data" symlink to a new directory; a rename over the old file (mv,
// "meshgate ca issue --out"); and writes in place. A new set of files is
// used only once it is whole and good: cert.pem an X509-SVID, key.pem its
// key, and cert.pem verifying now against bundle.pem. A set caught half
// written, or bad, is logged at warn with the reason and the previous set
// stays in use. Connections already made are not touched by a reload.
type DirSource struct {
	dir     string
	log     *zap.Logger
	state   atomic.Pointer[dirState]
	watcher *fsnotify.Watcher

	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
	closeErr  error
}

// NewDirSource reads the certificate directory dir, which must hold a good
// set of files, and watches it for changes until Close. log gets a line
// per reload and per rejected set; nil logs nothing.
func NewDirSource(dir string, log *zap.Logger) (*DirSource, error) {
	if log == nil {
		log = zap.NewNop()
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, &Error{Op: "cert dir " + dir, Err: fmt.Errorf("watch: %w", err)}
	}
	// Watch before the first read, so no change between the two is missed.
	if err := w.Add(dir); err != nil {
		w.Close()
		return nil, &Error{Op: "cert dir " + dir, Err: fmt.Errorf("watch: %w", err)}
	}
	st, err := loadDir(dir, time.Now())
	if err != nil {
		w.Close()
		return nil, &Error{Op: "cert dir " + dir, Err: err}
	}
	s := &DirSource{
		dir:     dir,
		log:     log.With(zap.String("cert_dir", dir)),
		watcher: w,
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	s.state.Store(st)
	s.log.Info("workload certificate loaded", svidFields(st)...)
	go s.run()
	return s, nil
}

// GetX509SVID returns the current workload certificate and key. It
// implements x509svid.Source.
func (s *DirSource) GetX509SVID() (*x509svid.SVID, error) {
	return s.state.Load().svid, nil
}

// GetX509BundleForTrustDomain returns the current roots of td. It
// implements x509bundle.Source. The directory holds the bundle of its
// certificate's own trust domain only.
func (s *DirSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	b, err := s.state.Load().bundles.GetX509BundleForTrustDomain(td)
	if err != nil {
		return nil, fmt.Errorf("mtls: cert dir %s: %w", s.dir, err)
	}
	return b, nil
}

// CurrentSVID returns the workload certificate in use, for metrics and
// logs: its leaf's SerialNumber and NotAfter tell which certificate new
// handshakes present and when it expires.
func (s *DirSource) CurrentSVID() *x509svid.SVID {
	return s.state.Load().svid
}

// Close stops watching the directory. The last good certificate and
// bundle stay readable, for connections that are still draining.
func (s *DirSource) Close() error {
	s.closeOnce.Do(func() {
		close(s.stop)
		<-s.done
		if err := s.watcher.Close(); err != nil {
			s.closeErr = fmt.Errorf("mtls: cert dir %s: %w", s.dir, err)
		}
	})
	return s.closeErr
}

// run owns the watch: it debounces events and reloads.
func (s *DirSource) run() {
	defer close(s.done)
	debounce := time.NewTimer(time.Hour)
	debounce.Stop()
	defer debounce.Stop()
	resync := time.NewTicker(dirResync)
	defer resync.Stop()
	var rejected [sha256.Size]byte // the last set refused, not to warn about it again
	for {
		select {
		case <-s.stop:
			return
		case ev, ok := <-s.watcher.Events:
			if !ok {
				return
			}
			if ev.Op == fsnotify.Chmod {
				continue // kubelet and backup tools touch modes; content is what matters
			}
			s.log.Debug("cert dir changed", zap.String("file", ev.Name), zap.Stringer("op", ev.Op))
			debounce.Reset(dirDebounce)
		case err, ok := <-s.watcher.Errors:
			if !ok {
				return
			}
			// Most likely an overflowed event queue: read the directory to
			// catch up with whatever was missed.
			s.log.Warn("cert dir watch error; reading the directory again", zap.Error(err))
			debounce.Reset(dirDebounce)
		case <-debounce.C:
			s.reload(&rejected)
		case <-resync.C:
			s.reload(&rejected)
		}
	}
}

// reload reads the directory and, if its files changed and are good,
// makes them current.
func (s *DirSource) reload(rejected *[sha256.Size]byte) {
	cur := s.state.Load()
	f, err := readDir(s.dir)
	if err == nil && f.equal(cur.files) {
		return
	}
	var st *dirState
	if err == nil {
		st, err = parseDir(f, time.Now())
	}
	if err != nil {
		h := sha256.New()
		fmt.Fprintf(h, "%d:%s%d:%s%d:%s%s", len(f.cert), f.cert, len(f.key), f.key, len(f.bundle), f.bundle, err)
		var sum [sha256.Size]byte
		h.Sum(sum[:0])
		level := zap.WarnLevel
		if sum == *rejected {
			level = zap.DebugLevel
		}
		*rejected = sum
		if ce := s.log.Check(level, "cert dir rejected; keeping the previous certificate"); ce != nil {
			ce.Write(append([]zap.Field{zap.Error(err)}, svidFields(cur)...)...)
		}
		return
	}
	*rejected = [sha256.Size]byte{}
	s.state.Store(st)
	s.log.Info("workload certificate reloaded", append(svidFields(st),
		zap.String("previous_serial", fmt.Sprintf("%x", cur.svid.Certificates[0].SerialNumber)))...)
}

func svidFields(st *dirState) []zap.Field {
	leaf := st.svid.Certificates[0]
	roots := 0
	if b, ok := st.bundles.Get(st.svid.ID.TrustDomain()); ok {
		roots = len(b.X509Authorities())
	}
	return []zap.Field{
		zap.String("spiffe_id", st.svid.ID.String()),
		zap.String("serial", fmt.Sprintf("%x", leaf.SerialNumber)),
		zap.Time("not_after", leaf.NotAfter),
		zap.Int("roots", roots),
	}
}
