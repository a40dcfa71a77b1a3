"""Models and data by name: packaged offline ones, local files, and hf:<id> for online users."""
