/**
 * Resilience options for Redis tests that are not about timeouts: a command on a loaded CI machine
 * may take longer than the 1 s default, and a test that counts loader calls or L2 errors should
 * not fail because one did (three would open the breaker for the tests after it). Tests of
 * timeouts, breakers and the heartbeat set their own. (A module of its own: child processes
 * import it without the test runner.)
 */
export const PATIENT = { timeout: "10s" } as const;
