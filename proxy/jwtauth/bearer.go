package jwtauth

import "strings"

// BearerToken returns the token of an Authorization header value
// "Bearer <token>" (RFC 6750 §2.1; the scheme is case-insensitive, RFC
// 9110 §11.1), and false for anything else: another scheme, no token, or
// a token with characters outside b64token.
func BearerToken(header string) (string, bool) {
	scheme, tok, ok := strings.Cut(header, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	tok = strings.TrimLeft(tok, " ")
	tok = strings.TrimRight(tok, " \t")
	if tok == "" || !isB64Token(tok) {
		return "", false
	}
	return tok, true
}

// isB64Token reports whether s is a b64token:
// 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"=".
func isB64Token(s string) bool {
	body := strings.TrimRight(s, "=")
	if body == "" {
		return false
	}
	for i := 0; i < len(body); i++ {
		c := body[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '-', c == '.', c == '_', c == '~', c == '+', c == '/':
		default:
			return false
		}
	}
	return true
}
