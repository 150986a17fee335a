// The SPDY/3.1 streaming client lives in src/ (the bench drives it too); the tests keep importing it from here.
export * from '../../src/streaming/spdy/client.js';
