'use strict';
// The bare Node "ws" peer of make bench (issue 8): the lower bound of a
// Node stack, one process, rooms in a Map, no persistence, no relay.
//   node ws-server.js PORT
// "J<room>" joins (answered "J"); "P<room> <body>" sends the body to
// everyone in the room, sender included.
const { WebSocketServer } = require('ws');

const port = Number(process.argv[2]);
const rooms = new Map();
const wss = new WebSocketServer({
    host: '127.0.0.1',
    port,
    perMessageDeflate: false,
    clientTracking: false,
});

wss.on('connection', (ws) => {
    const joined = [];
    ws.on('message', (data, isBinary) => {
        const text = data.toString();
        if (text[0] === 'J') {
            const name = text.slice(1);
            let room = rooms.get(name);
            if (!room) {
                room = new Set();
                rooms.set(name, room);
            }
            room.add(ws);
            joined.push(name);
            ws.send('J');
        } else if (text[0] === 'P') {
            const sp = text.indexOf(' ');
            const room = rooms.get(text.slice(1, sp));
            if (room) {
                const body = text.slice(sp + 1);
                for (const peer of room) {
                    peer.send(body);
                }
            }
        }
    });
    ws.on('close', () => {
        for (const name of joined) {
            const room = rooms.get(name);
            if (room) {
                room.delete(ws);
                if (room.size === 0) {
                    rooms.delete(name);
                }
            }
        }
    });
});

wss.on('listening', () => console.log(`ws listening ${port}`));
