"""Domain services: plain functions over a Session (and Redis); none of them imports FastAPI."""
