// SPDX-License-Identifier: Apache-2.0
// Types of cardd.js, the browser client of cardd (served at /v1/client/cardd.d.ts).

/** Stable error codes: cardd's own (see its README) plus the client's. */
export type CarddErrorCode =
  | "not_running" | "origin_not_allowed" | "popup_blocked" | "scope_denied"
  | "no_reader" | "no_card" | "reader_busy" | "card_removed" | "card_not_supported" | "timeout"
  | "pin_incorrect" | "pin_blocked" | "user_cancelled" | "cancelled" | "pin_entry_unavailable"
  | "bad_nonce" | "origin_mismatch" | "invalid_input" | "pkcs11_module_missing"
  | (string & {});

export declare class CarddError extends Error {
  constructor(code: string, message: string, extra?: { status?: number; triesLeft?: number | null });
  readonly name: "CarddError";
  readonly code: CarddErrorCode;
  /** HTTP status; 0 when cardd was not reached. */
  readonly status: number;
  readonly triesLeft?: number | null;
}

export interface Detection {
  running: boolean;
  allowed: boolean;
  version?: string;
  status?: "ok" | "degraded";
}

export interface Reader {
  name: string;
  backend: string;
  kind: "contact" | "contactless" | "serial" | "unknown";
  cardPresent: boolean;
  atr: string | null;
  cardType: string | null;
  [key: string]: unknown;
}

export interface CarddEvent {
  type: string;
  seq?: number;
  time?: number;
  reader?: string;
  [key: string]: unknown;
}

export interface EventStream extends AsyncIterableIterator<CarddEvent> {
  readonly source: EventSource;
  close(): void;
}

export interface MoicaCertificate {
  certificate: string;
  usage: "sign" | "encrypt" | string;
  notBefore: string;
  notAfter: string;
  serial: string;
  generation: string | null;
}

export interface MoicaCard {
  reader: string;
  cardType: string;
  generation: "gen1" | "gen2" | "contactless";
  cardNumber: string | null;
  holderName: string | null;
  idLast4: string | null;
  certificates: MoicaCertificate[];
}

/** The token to post to the relying party's server (verify it there: cardd.moica.verify). */
export interface MoicaToken {
  format: "cardd-moica:1";
  unverifiedCertificate: string;
  algorithm: "RS256";
  signature: string;
  appVersion: string;
}

export interface UidForms {
  hex: string;
  hexReversed: string;
  /** The chip number (內碼): little-endian decimal, 10 digits for 4-byte UIDs. */
  decLE: string;
  decBE: string;
  length: number;
}

export interface Tap {
  reader: string;
  uid: UidForms;
  randomUid: boolean;
  atr?: string | null;
  cardType?: string | null;
  [key: string]: unknown;
}

export interface StudentCard {
  uid: UidForms;
  record: string;
  reason: string | null;
  libraryNumber: string | null;
  maskedId: string | null;
  suffix: string | null;
  ledgerState: string | null;
  issuedAt: string | null;
}

export interface Cardd {
  readonly base: string;
  detect(): Promise<Detection>;
  readers(): Promise<Reader[]>;
  events(opts?: { types?: string[] }): EventStream;
  moica: {
    read(opts?: { reader?: string }): Promise<MoicaCard>;
    /** Call directly in a click handler: it opens cardd's PIN window before awaiting. */
    authenticate(nonce: string, opts?: { reader?: string }): Promise<MoicaToken>;
  };
  rfid: {
    waitTap(opts?: { reader?: string; timeoutMs?: number }): Promise<Tap>;
  };
  studentCard: {
    read(opts?: { reader?: string }): Promise<StudentCard>;
  };
}

export declare function createClient(options?: { base?: string; popupFeatures?: string }): Cardd;

declare const cardd: Cardd;
export default cardd;
export declare const detect: Cardd["detect"];
export declare const readers: Cardd["readers"];
export declare const events: Cardd["events"];
export declare const moica: Cardd["moica"];
export declare const rfid: Cardd["rfid"];
export declare const studentCard: Cardd["studentCard"];
