package nsrun

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"

	"github.com/vishvananda/netns"
)

// Dial connects to addr from inside the network namespace at path: the
// socket is made there, so the namespace's routes and rules apply to it.
func Dial(ctx context.Context, path, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := Do(path, func() (err error) {
		c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// Do runs fn with a thread switched into the network namespace at path (for
// example /proc/1234/ns/net or /run/netns/pod-a) and waits for it. An empty
// path runs fn in the current namespace. fn runs on a goroutine of its own,
// locked to its thread; if switching back fails, that goroutine exits still
// locked, so the Go runtime retires the thread instead of reusing one that
// sits in the wrong namespace.
func Do(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	target, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w (is the path right, and are you root?)", path, err)
	}
	defer target.Close()

	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		origin, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("open current network namespace: %w", err)
			return
		}
		defer origin.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			done <- fmt.Errorf("enter network namespace %s: %w (needs CAP_SYS_ADMIN)", path, err)
			return
		}
		ferr := fn()
		if err := netns.Set(origin); err != nil {
			// Stay locked: this goroutine's exit retires the thread.
			done <- errors.Join(ferr, fmt.Errorf("return from network namespace %s: %w", path, err))
			return
		}
		runtime.UnlockOSThread()
		done <- ferr
	}()
	return <-done
}

// PathForPID returns the network namespace path of a running process.
func PathForPID(pid int) string {
	return fmt.Sprintf("/proc/%d/ns/net", pid)
}
