import Foundation
import KilnSupport
import Testing

/// Lines written from many threads at once reach a pipe whole, however long (a `--json` build's events).
struct LineWriterTests {
    @Test func longLinesFromManyThreadsArriveWhole() throws {
        var ends: [Int32] = [0, 0]
        #expect(pipe(&ends) == 0)
        let writer = LineWriter(descriptor: ends[1])
        let threads = 8, linesEach = 40, length = 20_000
        let received = Locked(Data())
        let done = DispatchSemaphore(value: 0)
        let readEnd = ends[0]
        Thread {
            let handle = FileHandle(fileDescriptor: readEnd, closeOnDealloc: false)
            while true {
                let chunk = handle.availableData
                if chunk.isEmpty { break }
                received.withLock { $0.append(chunk) }
                usleep(200)
            }
            done.signal()
        }.start()
        DispatchQueue.concurrentPerform(iterations: threads) { thread in
            let letter = Character(UnicodeScalar(UInt8(65 + thread)))
            for _ in 0..<linesEach { writer.write(String(repeating: letter, count: length)) }
        }
        close(ends[1])
        done.wait()
        close(ends[0])
        let lines = String(decoding: received.current, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).dropLast()
        #expect(lines.count == threads * linesEach)
        let torn = lines.filter { line in line.count != length || Set(line).count != 1 }
        #expect(torn.count == 0, "lines cut into by another")
    }
}
