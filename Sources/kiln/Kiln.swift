import KilnCommands

@main
enum Kiln {
    static func main() async {
        await KilnCommand.main()
    }
}
