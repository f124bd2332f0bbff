import { describe, expect, it } from 'vitest';
import { createMachine } from 'xstate';
import { allTransitions, stateId, transitionId } from '../../../src/inspect/ids.js';
import { connectionMachine, handshakeMachine, transmissionMachine } from '../../../src/machines/index.js';

describe('statechart ids', () => {
  const m = createMachine({
    id: 'm',
    initial: 'a',
    states: {
      a: { on: { go: [{ target: 'b', guard: () => false }, { target: 'c' }] }, always: { target: 'c', guard: () => false } },
      b: {},
      c: { initial: 'x', states: { x: { on: { back: '#m.a' } } } },
    },
  });

  it('names states by their xstate id and transitions by source, event and index', () => {
    expect(stateId(m.root.states.c!.states.x!)).toBe('m.c.x');
    const ids = allTransitions(m).map((t) => t.id);
    expect(ids).toEqual(['m.a|go|0', 'm.a|go|1', 'm.a|always|0', 'm.c.x|back|0']);
    const second = m.root.states.a!.transitions.get('go')![1]!;
    expect(transitionId(second)).toBe('m.a|go|1');
  });

  it('gives every transition of the project machines a distinct id', () => {
    for (const machine of [connectionMachine, handshakeMachine, transmissionMachine]) {
      const ids = allTransitions(machine).map((t) => t.id);
      expect(ids.length).toBeGreaterThan(3);
      expect(new Set(ids).size).toBe(ids.length);
    }
  });
});
