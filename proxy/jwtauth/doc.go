// Package jwtauth is the JWT stage of the inbound request path: it checks
// the bearer token of a request against the JWKS of the token's issuer,
// so that the authorization policy can then match on verified claims. A
// request whose token fails gets a 401 from the proxy, whose body is the
// Error (which never holds the token or key material).
//
// A Provider is one issuer: its "iss", the audiences this proxy accepts,
// and a JWKS read from a file or fetched from a URL. A Set picks the
// provider of a token by its "iss" (read before verifying, and checked
// again after). Run keeps the keys fresh; the caller owns its goroutine.
//
// What is accepted, and why:
//
//   - Compact JWS (RFC 7515 §7.1) of at most MaxTokenSize bytes, signed
//     with RS256, RS384, RS512, PS256, ES256, ES384 or EdDSA. "none" is
//     refused (no signature), and so is every HMAC alg: the keys are
//     public, and a token "signed" with HS256 using the RSA public key as
//     the secret is the classic key-confusion forgery (RFC 8725 §2.1,
//     §3.1).
//   - A key verifies a token only if its type fits the token's alg (RSA
//     for RS*/PS*, the alg's curve for ES*, Ed25519 for EdDSA) and its own
//     "alg" in the JWKS, when present, equals the token's (RFC 8725 §3.1).
//     With a kid, only keys with that kid are tried; without, every key
//     that fits.
//   - JWKS entries that are private keys, symmetric keys (kty "oct"), or
//     whose "use" is not "sig", RSA keys under 2048 bits, and keys of other
//     types or curves are ignored, with a warning per refresh.
//   - exp, nbf and iat are checked with Options.ClockSkew of leeway. A
//     token without exp is accepted, as Envoy's jwt_authn does: whether a
//     token expires is the issuer's choice, and a policy that needs it can
//     require the claim. iss must equal Options.Issuer; aud (a string or a
//     list) must hold one of Options.Audiences when there are any.
//
// Keys and rotation: a token whose kid is unknown makes the provider
// refresh its JWKS at once (at most once per MinRefreshInterval, shared
// by concurrent requests, waited for at most 2s) before it is refused as
// "unknown-kid", so a new key works as soon as the issuer publishes it. A
// key the JWKS stops listing stays valid for KeyRetention, so tokens
// signed just before a rotation keep working. A refresh that fails keeps
// the keys there were.
package jwtauth
