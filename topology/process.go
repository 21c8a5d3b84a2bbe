package topology

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"meshgate/nsrun"
)

// Process is a program a lab started inside a pod. Stop ends it by PID.
type Process struct {
	Cmd  *exec.Cmd
	name string
	done chan struct{}
	err  error // Wait's result, valid once done is closed

	mu  sync.Mutex
	out bytes.Buffer // stdout and stderr, when not redirected
}

// ProcOptions tunes Start.
type ProcOptions struct {
	// UID and GID run the process as that user (with CAP_NET_ADMIN kept,
	// so a sidecar can still mark its sockets). Nil runs it as root.
	UID, GID *uint32
	// Output receives stdout and stderr; nil keeps them in memory (Output).
	Output io.Writer
	// Env is appended to the environment.
	Env []string
}

// Start runs argv inside the pod's namespace. The process is stopped by
// Lab.Close unless it was stopped before.
func (p *Pod) Start(argv []string, o ProcOptions) (*Process, error) {
	if len(argv) == 0 {
		return nil, errors.New("topology: start: empty command")
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), o.Env...)
	pr := &Process{Cmd: cmd, name: strings.Join(argv, " "), done: make(chan struct{})}
	if o.Output != nil {
		cmd.Stdout, cmd.Stderr = o.Output, o.Output
	} else {
		w := lockedWriter{pr}
		cmd.Stdout, cmd.Stderr = w, w
	}
	attr, err := o.sysProcAttr()
	if err != nil {
		return nil, fmt.Errorf("topology: start %q in %s: %w", pr.name, p.NS, err)
	}
	cmd.SysProcAttr = attr
	if err := nsrun.Do(p.Path(), cmd.Start); err != nil {
		return nil, fmt.Errorf("topology: start %q in %s: %w", pr.name, p.NS, err)
	}
	go func() {
		pr.err = cmd.Wait()
		close(pr.done)
	}()
	p.lab.mu.Lock()
	p.lab.procs = append(p.lab.procs, pr)
	p.lab.mu.Unlock()
	return pr, nil
}

// Run runs argv inside the pod and returns its stdout; on failure the
// error carries stderr.
func (p *Pod) Run(ctx context.Context, argv ...string) (string, error) {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := nsrun.Do(p.Path(), cmd.Start)
	if err == nil {
		err = cmd.Wait()
	}
	if err != nil {
		return stdout.String(), fmt.Errorf("%s in %s: %w: %s", strings.Join(argv, " "), p.Name, err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// PID returns the process ID.
func (pr *Process) PID() int { return pr.Cmd.Process.Pid }

// Done is closed when the process has ended.
func (pr *Process) Done() <-chan struct{} { return pr.done }

// Exited reports whether the process has ended.
func (pr *Process) Exited() bool {
	select {
	case <-pr.done:
		return true
	default:
		return false
	}
}

// Wait waits for the process to end by itself, up to timeout.
func (pr *Process) Wait(timeout time.Duration) error {
	select {
	case <-pr.done:
		return pr.err
	case <-time.After(timeout):
		return fmt.Errorf("topology: %q still running after %s", pr.name, timeout)
	}
}

// Signal sends sig to the process.
func (pr *Process) Signal(sig os.Signal) error { return pr.Cmd.Process.Signal(sig) }

// Stop sends SIGTERM, waits up to grace, then SIGKILLs. It returns the
// process's exit error (nil for exit status 0).
func (pr *Process) Stop(grace time.Duration) error {
	if pr.Exited() {
		return pr.err
	}
	_ = pr.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-pr.done:
	case <-time.After(grace):
		_ = pr.Cmd.Process.Kill()
		<-pr.done
	}
	return pr.err
}

// Output returns what the process printed so far (when Output was nil).
func (pr *Process) Output() string {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	return pr.out.String()
}

type lockedWriter struct{ pr *Process }

func (w lockedWriter) Write(b []byte) (int, error) {
	w.pr.mu.Lock()
	defer w.pr.mu.Unlock()
	return w.pr.out.Write(b)
}
