// Package nsrun runs code inside another Linux network namespace.
//
// A network namespace belongs to an OS thread, not to a process, so Do locks
// the calling goroutine to its thread, switches the thread into the target
// namespace, runs the function, and always switches back before unlocking.
// Sockets created inside fn stay in the target namespace for their whole
// life, and child processes started inside fn (os/exec forks from the
// current thread) are born in it: that is how meshgate enrolls a running
// workload from the host without touching the workload itself.
package nsrun
