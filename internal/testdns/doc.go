// Package testdns runs authoritative DNS servers for tests: a function
// answers each question, over UDP and TCP on the sockets a test gives (on
// loopback, or inside a pod's namespace), the answer cut to the asker's
// size over UDP as a real server does, and every question counted.
package testdns
