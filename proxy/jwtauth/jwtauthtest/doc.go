// Package jwtauthtest makes keys, JWKS documents and signed tokens for
// tests of the JWT stage (package jwtauth) and of the proxy in front of
// it. Nothing here is for production: keys are fresh per test, and
// SignNone and SignHMAC make the tokens the stage must refuse.
package jwtauthtest
