"""protege.serving"""
