'use strict';
// The Socket.IO 4 peer of make bench (issue 8): one process of a cluster
// whose processes share rooms through @socket.io/redis-adapter.
//   node sio-server.js PORT REDIS_URL
// Client events: "j" (room) joins and is answered "joined"; "p" (room,
// body) broadcasts "m" (body) to everyone in the room, sender included,
// on every process.  WebSocket transport only, no compression.
const http = require('http');
const { Server } = require('socket.io');
const { createAdapter } = require('@socket.io/redis-adapter');
const { createClient } = require('redis');

const port = Number(process.argv[2]);
const redisUrl = process.argv[3] || 'redis://127.0.0.1:6379';

async function main() {
    const pub = createClient({ url: redisUrl });
    const sub = pub.duplicate();
    await Promise.all([pub.connect(), sub.connect()]);

    const server = http.createServer();
    const io = new Server(server, {
        transports: ['websocket'],
        perMessageDeflate: false,
        httpCompression: false,
        serveClient: false,
        maxHttpBufferSize: 1e6,
        adapter: createAdapter(pub, sub),
    });

    io.on('connection', (socket) => {
        socket.on('j', (room) => {
            socket.join(room);
            socket.emit('joined');
        });
        socket.on('p', (room, body) => {
            io.to(room).emit('m', body);
        });
    });

    server.listen(port, '127.0.0.1', () => {
        console.log(`sio listening ${port}`);
    });
}

main().catch((err) => {
    console.error(err);
    process.exit(1);
});
