// Package testmark tells a test which socket mark (SO_MARK) a client in
// the test's own process gave its connection, seen from the server's
// side: a Listener notes, for each connection it accepts, the mark of the
// socket at the other end. The code under test is not touched, so a
// socket it forgot to mark shows as mark 0. Linux only, like SO_MARK.
package testmark
