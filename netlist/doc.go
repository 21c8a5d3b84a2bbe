// Package netlist reads the lists of ports, addresses and CIDRs that
// meshgate's flags and config take, with one set of rules for all of
// them: comma-separated, spaces around items allowed, the empty string is
// the empty list, an empty item is an error; a bare address in a CIDR list
// is that one host; a CIDR must be in its canonical form. CheckPrefix
// holds the CIDR rules for prefixes that come typed (from YAML or code).
// ParseLines reads the same items from a list file, one per line, and
// Set matches an address against many CIDRs at once (IP allow and deny
// lists).
//
// It imports nothing of meshgate, so every package may import it.
package netlist
