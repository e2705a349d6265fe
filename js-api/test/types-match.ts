// Compiled (never run) by the test command: `tsc` fails when gateway.d.ts
// and gateway.js disagree on what the module exports, on a class's public
// members, or on how many parameters a public method has (optional or
// not: plain JS cannot say). `inferred/` is
// what tsc itself declares for gateway.js (written by the same check).
import type * as Declared from '../gateway';
import type * as Code from './inferred/gateway';

type Assert<T extends true> = T;
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
/** Members a page may use: the code's `_underscored` ones are internal. */
type Public<T> = Exclude<keyof T, `_${string}`>;
type IsAny<T> = 0 extends 1 & T ? true : false;
/** How many parameters a function has, optional ones included. */
type Arity<F> = F extends (...args: infer A) => unknown ? Required<A>['length'] : 'not a function';
type Arities<T> = {
  [K in Public<T>]: IsAny<T[K]> extends true
    ? 'value'
    : T[K] extends (...args: never[]) => unknown
      ? Arity<T[K]>
      : 'value';
};

export type Exports = Assert<Same<keyof typeof Declared, keyof typeof Code>>;
export type SessionMembers = Assert<Same<Public<Declared.Session>, Public<Code.Session>>>;
export type CallMembers = Assert<Same<Public<Declared.Call>, Public<Code.Call>>>;
export type ErrorMembers = Assert<Same<Public<Declared.GatewayError>, Public<Code.GatewayError>>>;
export type SessionArities = Assert<Same<Arities<Declared.Session>, Arities<Code.Session>>>;
export type CallArities = Assert<Same<Arities<Declared.Call>, Arities<Code.Call>>>;
export type ConnectArity = Assert<Same<Arity<typeof Declared.connect>, Arity<typeof Code.connect>>>;
export type AddressesArity = Assert<
  Same<Arity<typeof Declared.gatewayAddresses>, Arity<typeof Code.gatewayAddresses>>
>;
