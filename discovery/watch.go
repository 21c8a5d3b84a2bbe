package discovery

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
	"go.uber.org/zap"
)

// registryDebounce gathers the events of one save (editors write, rename
// and chmod in turn) into one reload; registryResync reads the file again
// in case an event was missed.
const (
	registryDebounce = 100 * time.Millisecond
	registryResync   = 30 * time.Second
)

// WatchRegistry keeps the registry in use that of the file at path, whose
// contents were loaded already as loaded, until ctx ends. A change that
// parses replaces the registry at once (SetRegistry); one that does not
// is logged, naming every problem, and the registry in use stays. The
// file's directory is watched, so that an editor's rename and a
// Kubernetes ConfigMap's symlink swap are seen as well as a write.
func (s *Server) WatchRegistry(ctx context.Context, path string, loaded []byte) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("discovery: registry %s: watch: %w", path, err)
	}
	defer w.Close()
	if err := w.Add(filepath.Dir(path)); err != nil {
		return fmt.Errorf("discovery: registry %s: watch: %w", path, err)
	}
	log := s.log.With(zap.String("registry", path))
	cur, rejected := loaded, []byte(nil)
	reload := func() {
		b, err := os.ReadFile(path)
		if err != nil || bytes.Equal(b, cur) {
			if err != nil && !bytes.Equal(rejected, []byte(err.Error())) {
				log.Warn("registry file unreadable; keeping the registry in use", zap.Error(err))
				rejected = []byte(err.Error())
			}
			return
		}
		r, err := ParseRegistry(b)
		if err != nil {
			if !bytes.Equal(b, rejected) {
				log.Warn("registry file rejected; keeping the registry in use", zap.Error(err))
			}
			rejected = b
			return
		}
		s.SetRegistry(r)
		cur, rejected = b, nil
		log.Info("registry reloaded", zap.Int("services", len(r.services)))
	}
	debounce := time.NewTimer(time.Hour)
	debounce.Stop()
	defer debounce.Stop()
	resync := time.NewTicker(registryResync)
	defer resync.Stop()
	// A change between the caller's read and the watch is caught here.
	reload()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			if ev.Op != fsnotify.Chmod {
				debounce.Reset(registryDebounce)
			}
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			log.Warn("registry watch error; reading the file again", zap.Error(err))
			debounce.Reset(registryDebounce)
		case <-debounce.C:
			reload()
		case <-resync.C:
			reload()
		}
	}
}
