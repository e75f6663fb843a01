/*
 * React bindings: useCollabSession(client, sessionId) mirrors the seed's
 * useRealtimeChat, and TypingIndicator shows "Ann is typing…" with
 * display names.  React is a peer dependency; nothing here runs without it.
 */

import { createElement, useCallback, useEffect, useSyncExternalStore }
    from 'react';
import type { ReactElement } from 'react';

import { formatTyping } from './index.js';
import type {
    AiReply, ChatMessage, CollabClient, CollabSession, InvitationsState,
    PresenceEntry, SessionInfo, SessionState, SessionStatus, TypingUser,
} from './index.js';

export interface UseCollabSession {
    messages: readonly ChatMessage[];
    presence: readonly PresenceEntry[];
    typingUsers: readonly TypingUser[];
    /* the AI participant's replies being made (see AiReply) */
    aiReplies: readonly AiReply[];
    /* queue a message (sent now, or when the connection is back), with a
     * data:image/...;base64 picture attached if image is given */
    send: (body: string, image?: string) => string | null;
    /* call with true on every keystroke; throttled and auto-stopped */
    setTyping: (on: boolean) => void;
    retry: (clientMsgId: string) => void;
    loadOlder: () => Promise<number>;
    /* stop the AI reply being made (resolves on ai_cancelled) */
    cancelAi: () => Promise<void>;
    /* forget an AI reply that ended with an error */
    dismissAiError: (replyTo: number) => void;
    status: SessionStatus;
    state: SessionState | null;
}

const EMPTY: SessionState = {
    id: '',
    status: 'idle',
    info: null,
    messages: [],
    presence: [],
    typingUsers: [],
    aiReplies: [],
    lastSeq: 0,
    hasOlder: false,
    error: null,
};

const noSubscribe = () => () => {};
const emptySnapshot = () => EMPTY;

export function useCollabSession(client: CollabClient,
                                 sessionId: string | null | undefined)
    : UseCollabSession
{
    /* the same handle for the same id: safe to look up while rendering */
    const session: CollabSession | null =
        sessionId ? client.session(sessionId) : null;

    useEffect(() => {
        if (!session) {
            return undefined;
        }
        session.acquire();
        return () => session.release();
    }, [session]);

    const state = useSyncExternalStore(
        session ? session.subscribe : noSubscribe,
        session ? session.getSnapshot : emptySnapshot,
        session ? session.getSnapshot : emptySnapshot);

    const send = useCallback((body: string, image?: string) =>
        session ? session.send(body, image) : null, [session]);
    const setTyping = useCallback((on: boolean) => {
        session?.setTyping(on);
    }, [session]);
    const retry = useCallback((id: string) => {
        session?.retry(id);
    }, [session]);
    const loadOlder = useCallback(() =>
        session ? session.loadOlder() : Promise.resolve(0), [session]);
    const cancelAi = useCallback(() =>
        session ? session.cancelAi() : Promise.resolve(), [session]);
    const dismissAiError = useCallback((replyTo: number) => {
        session?.dismissAiError(replyTo);
    }, [session]);

    return {
        messages: state.messages,
        presence: state.presence,
        typingUsers: state.typingUsers,
        aiReplies: state.aiReplies,
        send,
        setTyping,
        retry,
        loadOlder,
        cancelAi,
        dismissAiError,
        status: state.status,
        state: session ? state : null,
    };
}

/* the connection's status, for a "reconnecting…" banner */
export function useCollabConnection(client: CollabClient) {
    return useSyncExternalStore(
        useCallback((fn: () => void) => client.onStatus(fn), [client]),
        () => client.connection,
        () => client.connection);
}

export interface UseInvitations extends InvitationsState {
    accept: (id: number) => Promise<SessionInfo>;
    decline: (id: number) => Promise<SessionInfo>;
}

/* the signed-in user's pending invitations, updated live */
export function useInvitations(client: CollabClient): UseInvitations {
    const state = useSyncExternalStore(client.invitations.subscribe,
                                       client.invitations.getSnapshot,
                                       client.invitations.getSnapshot);
    const accept = useCallback((id: number) =>
        client.acceptInvitation(id), [client]);
    const decline = useCallback((id: number) =>
        client.declineInvitation(id), [client]);
    return { ...state, accept, decline };
}

export function TypingIndicator(props: { users: readonly TypingUser[];
                                         className?: string })
    : ReactElement | null
{
    const text = formatTyping(props.users);
    if (!text) {
        return null;
    }
    return createElement('span', {
        className: props.className ?? 'collab-typing',
        'aria-live': 'polite',
    }, text);
}
